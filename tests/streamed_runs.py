"""The same run held in memory and streamed (model.load: memory / stream), on tiny models of
each family saved with the test tokenizer: the config maker and the comparisons the streamed
engine's tests share (tests/models/test_stream.py, tests/structure)."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import TINY_ARCHS, arch_model, random_text, save_model_dir


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
    assert sorted(memory) == sorted(stream), (set(memory) ^ set(stream))
    for name in memory:
        assert memory[name].dtype == stream[name].dtype, name
        assert torch.equal(memory[name], stream[name]), name


def as_fused(directory) -> list:
    """Re-save `directory`'s model as a transformers 5 model holds it (each layer's experts in
    two fused 3-D tensors), not in the published per-expert layout save_pretrained writes by
    default. Returns the new names."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    model = AutoModelForCausalLM.from_pretrained(directory)
    (directory / "model.safetensors").unlink()
    model.save_pretrained(directory, save_original_format=False)
    return sorted(load_file(directory / "model.safetensors"))


def count_held_parameters(monkeypatch):
    """(held, parts): held["now"] / held["peak"] count the parameters a StreamedHandle holds
    materialised, now and at most, from here on; parts is {part: its parameter count}, filled
    at the first install."""
    from llmc.models.stream import StreamedHandle

    held = {"now": 0, "peak": 0}
    parts = {}
    install = StreamedHandle._install

    def counting_install(self, key, tensor):
        before = getattr(self._slots[key].module, self._slots[key].leaf)
        install(self, key, tensor)
        if self._slots[key].is_parameter:
            held["now"] += (0 if tensor.is_meta else tensor.numel()) - \
                (0 if before.is_meta else before.numel())
            held["peak"] = max(held["peak"], held["now"])
        if not parts:
            parts.update({part: sum(self._slots[k].skeleton.numel() for k in keys
                                    if self._slots[k].is_parameter)
                          for part, keys in self._parts.items()})

    monkeypatch.setattr(StreamedHandle, "_install", counting_install)
    return held, parts
