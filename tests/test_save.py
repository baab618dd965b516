"""Save → reload round-trip, the staged run and its commit, refusal to overwrite, file modes.
(Kills, signals, locks and unwritable paths: tests/reliability/test_outputs.py.)"""
import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_model
from llmc.models import ModelHandle
from llmc.registry import MODELS
from llmc.config import SaveCfg
from llmc.errors import LlmcError
from llmc.files import write_text
from llmc.outputs import open_run
from llmc.save import save_model, write_results


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_round_trip_gives_identical_logits(tmp_path, tiny_tokenizer, arch):
    model = tiny_model(arch)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, ::2] = 0  # a "pruned" weight survives too
    path = save_model(ModelHandle(model, MODELS["Llama" if arch == "llama" else "Qwen2"]),
                      tiny_tokenizer, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ids = torch.randint(0, 300, (2, 10))
    with torch.no_grad():  # bitwise: the same weights through the same kernels, in one process
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    assert (reloaded.model.layers[0].mlp.up_proj.weight[:, ::2] == 0).all()
    assert list(path.parent.iterdir()) == [path]  # no temporary directory left behind
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()


def one_run(cfg, results, model=None, tokenizer=None):
    with open_run(cfg) as out:
        if model is not None:
            save_model(ModelHandle(model, MODELS["Llama"]), tokenizer, out.dir)
        write_results(out.dir, {"run_id": out.run_id, **results}, {"a": results["n"]})
        out.commit()
    return out.run_id


def test_a_committed_run_is_read_through_links_refused_then_replaced_on_overwrite(
        tmp_path, tiny_tokenizer):
    cfg = SaveCfg(save_trans=True, save_path=str(tmp_path))
    first = one_run(cfg, {"n": 1}, tiny_model("llama"), tiny_tokenizer)
    assert os.readlink(tmp_path / ".llmc" / "current") == f"runs/{first}"
    for name in ("results.json", "config.yml", "transformed_model"):
        assert os.readlink(tmp_path / name) == f".llmc/current/{name}"
    assert json.loads((tmp_path / "results.json").read_text()) == {"run_id": first, "n": 1}
    assert (tmp_path / "config.yml").read_text().strip() == "a: 1"
    AutoModelForCausalLM.from_pretrained(tmp_path / "transformed_model")

    with pytest.raises(LlmcError, match="results.json' already exists.*overwrite"):
        one_run(cfg, {"n": 2})
    assert json.loads((tmp_path / "results.json").read_text())["n"] == 1
    assert os.listdir(tmp_path / ".llmc" / "runs") == [first]  # the refused run left nothing

    cfg.overwrite = True
    second = one_run(cfg, {"n": 2})  # without a model this time
    assert json.loads((tmp_path / "results.json").read_text()) == {"run_id": second, "n": 2}
    assert not os.path.lexists(tmp_path / "transformed_model")
    assert os.listdir(tmp_path / ".llmc" / "runs") == [second]
    assert sorted(os.listdir(tmp_path)) == [".llmc", "config.yml", "results.json"]


def test_leaving_the_run_without_a_commit_keeps_the_previous_outputs(tmp_path):
    cfg = SaveCfg(save_path=str(tmp_path), overwrite=True)
    first = one_run(cfg, {"n": 1})
    with pytest.raises(RuntimeError, match="late"):
        with open_run(cfg) as out:
            write_results(out.dir, {"n": 2}, {"a": 2})
            raise RuntimeError("a late failure")
    assert not out.dir.exists() and not (tmp_path / ".llmc" / "lock").exists()
    assert json.loads((tmp_path / "results.json").read_text())["run_id"] == first


def test_save_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LlmcError, match="is a file"):
        with open_run(SaveCfg(save_path=str(tmp_path / "f"))):
            pass


def test_write_text_gives_a_plain_mode_and_leaves_no_temporary(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o640  # 0666 & ~umask, not 0600
    assert os.listdir(tmp_path) == ["a.json"]
