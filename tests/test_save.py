"""Save → reload round-trip, atomic outputs, and refusal to overwrite."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_model
from llmc.config import SaveCfg
from llmc.errors import LlmcError
from llmc.save import check_save_path, save_model, write_results


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_round_trip_gives_identical_logits(tmp_path, tiny_tokenizer, arch):
    model = tiny_model(arch)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, ::2] = 0  # a "pruned" weight survives too
    path = save_model(model, tiny_tokenizer, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    ids = torch.randint(0, 300, (2, 10))
    with torch.no_grad():  # bitwise: the same weights through the same kernels, in one process
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    assert (reloaded.model.layers[0].mlp.up_proj.weight[:, ::2] == 0).all()
    assert list(path.parent.iterdir()) == [path]  # no temporary directory left behind
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()


def test_existing_outputs_are_refused_then_replaced_on_overwrite(tmp_path, tiny_tokenizer):
    cfg = SaveCfg(save_trans=True, save_path=str(tmp_path))
    check_save_path(cfg)  # empty: fine
    (tmp_path / "transformed_model").mkdir()
    (tmp_path / "transformed_model" / "keep.txt").write_text("precious")
    with pytest.raises(LlmcError, match="transformed_model' already exists.*overwrite"):
        check_save_path(cfg)
    assert (tmp_path / "transformed_model" / "keep.txt").read_text() == "precious"
    cfg.overwrite = True
    check_save_path(cfg)
    save_model(tiny_model("llama"), tiny_tokenizer, tmp_path)
    assert not (tmp_path / "transformed_model" / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transformed_model"]


def test_results_refused_when_present(tmp_path):
    write_results(tmp_path, {"ppl": {"pretrain": {"x": 1.0}}}, {"a": 1})
    assert json.loads((tmp_path / "results.json").read_text())["ppl"]["pretrain"]["x"] == 1.0
    assert (tmp_path / "config.yml").read_text().strip() == "a: 1"
    with pytest.raises(LlmcError, match="results.json"):
        check_save_path(SaveCfg(save_path=str(tmp_path)))


def test_save_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LlmcError, match="is a file"):
        check_save_path(SaveCfg(save_path=str(tmp_path / "f")))
