"""The streamed engine (llmc/models/stream.py) against the in-memory one: for every adapter and
every method, a run that reads each part from disk only while used and writes each block as it
finishes gives bit-identical weights, perplexities and a directory plain transformers loads.

Both engines run the same operations in the same order on the same bytes (the streamed one
converts each tensor to the model's dtype as from_pretrained does), in one process, so the
comparisons are bitwise."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import ONE_PER_ADAPTER, TINY_ARCHS, arch_model, random_text, save_model_dir
from llmc.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def stream_config(tmp_path, tiny_tokenizer):
    """make(arch, method, load, **sections) -> config path of a 2-block run on variant `arch`."""
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": random_text(200, s)}) + "\n" for s in range(3)))
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(json.dumps({"text": random_text(120, 99)}) + "\n")
    models = {}

    def make(arch, method, load, sparse=None, eval_cfg=None, name=None):
        if arch not in models:
            models[arch] = save_model_dir(arch_model(arch, seed=1), tiny_tokenizer,
                                          tmp_path / f"model-{arch}")
        row = TINY_ARCHS[arch]
        name = name or f"{arch}-{method}-{load}"
        config = {
            "base": {"seed": 0, "device": "cpu"},
            "model": {"type": row.adapter, "path": models[arch], "load": load,
                      "trust_remote_code": row.remote},
            "calib": {"name": "wikitext2", "path": str(calib), "n_samples": 3, "seq_len": 24,
                      "preproc": "wikitext2_gptq"},
            "eval": {"name": "wikitext2", "path": str(evaluation), "seq_len": 24,
                     **(eval_cfg or {})},
            "sparse": {"method": method, "weight": {"sparsity": 0.5}, **(sparse or {})},
            "save": {"save_trans": True, "save_path": str(tmp_path / name)},
        }
        path = tmp_path / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


def saved_tensors(save_path) -> dict:
    directory = Path(save_path) / "transformed_model"
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def run_both(cli, stream_config, arch, method, **kwargs):
    results = {}
    for load in ("memory", "stream"):
        path = stream_config(arch, method, load, **kwargs)
        code, stderr = cli("--config", path)
        assert code == 0, stderr
        save_path = Path(yaml.safe_load(path.read_text())["save"]["save_path"])
        results[load] = (json.loads((save_path / "results.json").read_text()),
                         saved_tensors(save_path), save_path)
    return results


def assert_same_weights(memory, stream):
    assert sorted(memory) == sorted(stream)
    for name in memory:
        assert memory[name].dtype == stream[name].dtype, name
        assert torch.equal(memory[name], stream[name]), name


@pytest.mark.parametrize("arch", ONE_PER_ADAPTER)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_streamed_run_equals_in_memory_run(cli, stream_config, arch, method):
    sparse = {"mixgpt": {"sensitivity": {"max_iter": 2}}} \
        if method == "MixGPT" else None
    both = run_both(cli, stream_config, arch, method, sparse=sparse,
                    eval_cfg={"eval_pos": ["transformed"]})
    (memory, memory_weights, _), (stream, stream_weights, stream_path) = both["memory"], \
        both["stream"]
    assert memory["engine"]["load"] == "memory" and stream["engine"]["load"] == "stream"
    assert_same_weights(memory_weights, stream_weights)
    assert memory["ppl"] == stream["ppl"]
    assert memory["sparsity"] == stream["sparsity"]
    assert memory.get("plan") == stream.get("plan")
    assert not (stream_path / ".llmc" / "scratch" / "shards").exists()
