"""Structured runs on the streamed engine (llmc/models/stream.py): the structured pass slices
each block read from disk and writes the smaller block to its own shard, removes blocks from the
skeleton, and the run goes on streaming the smaller model; the result is the in-memory run's,
bit for bit (the same operations in the same order on the same bytes, one process)."""
import json
from pathlib import Path

import pytest

from streamed_runs import assert_same_weights, run_both, stream_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NONE = {"weight": {"sparsity": 0}}
CASES = {
    "llama-shortgpt-wanda": ("llama", "Wanda", {"structure": "ShortGPT",
                                                "depth": {"remove": 1}}),
    "gemma3-contiguous": ("gemma3", "none", {"structure": "Contiguous",
                                             "depth": {"remove": 1}, **NONE}),
    "llama-width-sparsegpt": ("llama", "SparseGPT", {"structure": "Width",
                                                     "width": {"heads": 1, "channels": 16}}),
    "opt-width-wanda": ("opt", "Wanda", {"structure": "Width",
                                         "width": {"heads": 0, "channels": 16}}),
    # a MoE model's blocks renumbered: their experts' tensors keep their sources and names
    "mixtral-shortgpt-wanda": ("mixtral", "Wanda", {"structure": "ShortGPT",
                                                    "depth": {"remove": 1}}),
    "qwen3-width": ("qwen3", "none", {"structure": "Width",
                                      "width": {"heads": 1, "channels": 8}, **NONE}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_streamed_structured_run_equals_the_in_memory_one(cli, stream_config, case):
    arch, method, sparse = CASES[case]
    both = run_both(cli, stream_config, arch, method, sparse=sparse,
                    eval_cfg={"eval_pos": ["pretrain", "transformed"]})
    (memory, memory_weights, memory_path), (stream, stream_weights, stream_path) = \
        both["memory"], both["stream"]
    assert stream["engine"]["load"] == "stream" and memory["engine"]["load"] == "memory"
    assert_same_weights(memory_weights, stream_weights)
    assert stream["ppl"] == memory["ppl"]
    structure = {k: v for k, v in stream["structure"].items() if k != "checkpoint_bytes"}
    assert structure == {k: v for k, v in memory["structure"].items()
                         if k != "checkpoint_bytes"}
    assert structure["parameters"]["after"] < structure["parameters"]["before"]
    saved = [json.loads((path / "transformed_model" / "config.json").read_text())
             for path in (memory_path, stream_path)]
    assert saved[0] == saved[1]
    assert saved[0]["num_hidden_layers"] == structure["blocks"]["after"]
    assert not list(Path(stream_path).glob(".llmc/scratch/shards/*"))  # committed, cleaned


def test_a_streamed_structured_pass_holds_one_block_and_its_smaller_copy(cli, stream_config,
                                                                         monkeypatch):
    """Counted in parameters: whenever the streamed handle installs a tensor, the model holds
    at most one part of the dense model or twice a block (while one is sliced), through the
    structured pass, pruning, the per-block eval and the save; at the end nothing."""
    from llmc.models.stream import StreamedHandle

    held = {"peak": 0, "parts": None, "model": None}
    install = StreamedHandle._install

    def counting_install(self, key, tensor):
        install(self, key, tensor)
        held["model"] = self.model
        if held["parts"] is None:  # the dense model's parts
            held["parts"] = {part: sum(self._slots[k].skeleton.numel() for k in keys)
                             for part, keys in self._parts.items()}
        held["peak"] = max(held["peak"], _materialised(self.model))

    monkeypatch.setattr(StreamedHandle, "_install", counting_install)
    path = stream_config("llama", "Wanda", "stream", name="held",
                         sparse={"structure": "Width", "width": {"heads": 1, "channels": 16}},
                         eval_cfg={"eval_pos": ["transformed"], "inference_per_block": True})
    code, stderr = cli("--config", path)
    assert code == 0, stderr
    assert _materialised(held["model"]) == 0
    blocks = [size for part, size in held["parts"].items() if part.startswith("block")]
    others = [size for part, size in held["parts"].items() if not part.startswith("block")]
    assert max(blocks) < held["peak"] <= max(max(others), 2 * max(blocks))


def _materialised(model) -> int:
    return sum(p.numel() for p in model.parameters() if not p.is_meta)
