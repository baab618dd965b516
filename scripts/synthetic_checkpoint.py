"""A seeded random checkpoint of any transformers config, written tensor by tensor: the model is
built on the meta device (names and shapes, no memory), and each tensor is drawn, written to
its shard and dropped, so making a 7B-shaped checkpoint holds one tensor at a time (the
largest: the embeddings or the head), never the model.

Each tensor comes from its own generator, seeded by the checkpoint's seed and the tensor's
name: the same config and seed give the same bytes, whatever the shard size. Weights are drawn
as transformers initialises them (normal, std `initializer_range`), norms are ones, biases
zeros; the files are standard sharded safetensors with `model.safetensors.index.json`, which
plain `from_pretrained` and llmc's streamed engine read.

A MoE model's fused experts (transformers 5's `<experts>.gate_up_proj` [experts, 2 x
intermediate, hidden] and `<experts>.down_proj`) are written as the published checkpoints hold
them (Qwen-MoE's names): one tensor per expert matrix, `<experts>.<e>.gate_proj.weight`,
`up_proj`, `down_proj`, each drawn under its own name.
"""
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmc.models.safetensors_io import safetensors_header  # noqa: E402

INDEX = "model.safetensors.index.json"


def tensor_value(name: str, shape, dtype, seed: int, std: float) -> torch.Tensor:
    """The value of tensor `name`: ones for a norm's weight, zeros for a bias, else normal(0,
    std) from a generator seeded by `seed` and the name."""
    if "norm" in name and name.endswith(".weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return (torch.randn(shape, generator=generator) * std).to(dtype)


def published_entries(name: str, shape):
    """[(name, shape)] of tensor `name` as the published checkpoints store it: a fused experts
    tensor as one tensor per expert matrix, anything else as it is."""
    base, _, leaf = name.rpartition(".")
    if leaf == "gate_up_proj" and len(shape) == 3:
        experts, rows, columns = shape
        return [(f"{base}.{e}.{linear}.weight", (rows // 2, columns))
                for e in range(experts) for linear in ("gate_proj", "up_proj")]
    if leaf == "down_proj" and len(shape) == 3:
        return [(f"{base}.{e}.down_proj.weight", tuple(shape[1:])) for e in range(shape[0])]
    return [(name, shape)]


def planned_shards(entries, dtype, max_shard_bytes: int):
    """[[(name, shape), ...] per shard]: in the model's order, a new shard once the next
    tensor would pass `max_shard_bytes` (a tensor larger than it gets a shard of its own)."""
    size = dtype.itemsize
    shards, current, used = [], [], 0
    for name, shape in entries:
        nbytes = size * int(torch.Size(shape).numel())
        if current and used + nbytes > max_shard_bytes:
            shards.append(current)
            current, used = [], 0
        current.append((name, shape))
        used += nbytes
    return shards + ([current] if current else [])


def write_shard(path: Path, shard, dtype, seed: int, std: float) -> int:
    """One safetensors file of `shard` [(name, shape)]: the header from the shapes alone, then
    each tensor drawn and written in turn (llmc's write_tensors takes the tensors first)."""
    encoded, total = safetensors_header([(name, dtype, shape) for name, shape in shard])
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for name, shape in shard:
            value = tensor_value(name, shape, dtype, seed, std).contiguous()
            f.write(memoryview(value.view(torch.uint8).numpy()))
            del value
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    return total


def write_checkpoint(target: Path, config, dtype=torch.bfloat16, seed: int = 0,
                     max_shard_bytes: int = 2**30) -> int:
    """Write the checkpoint of `config` into `target` (config.json, shards, index). Returns the
    bytes of tensor data."""
    from transformers import AutoModelForCausalLM

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    config.dtype = str(dtype).split(".")[1]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    seen, entries = set(), []
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:  # a tied head is saved once, under the embeddings' name
            seen.add(id(tensor))
            entries.extend(published_entries(name, tuple(tensor.shape)))
    std = getattr(config, "initializer_range", 0.02)
    shards = planned_shards(entries, dtype, max_shard_bytes)
    weight_map, total = {}, 0
    for number, shard in enumerate(shards, 1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(target / file, shard, dtype, seed, std)
        weight_map.update({name: file for name, _ in shard})
    (target / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                            "weight_map": weight_map}, indent=2) + "\n")
    config.save_pretrained(target)
    return total
