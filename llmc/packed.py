"""save.format: compressed-tensors: a sparse + quantized run (SparseGPT or MixGPT with wbits)
saved as the compressed-tensors library writes a pack-quantized model, so that transformers (with
compressed-tensors installed) and vLLM load it as a low-bit model: each quantized Linear's
`weight` becomes `weight_packed` (int32, 32/bits values per word), `weight_scale`,
`weight_zero_point` (packed too) and `weight_shape`, and config.json gains the
`quantization_config` that says so (per-channel, asymmetric, `wbits` bits).

The grid is the method's own (Sparsifier.weight_grid: scale and zero per row, fitted on the dense
weight), taken before pruning (a streamed model: one more read of the checkpoint, block by
block, before a resumed run adopts its pruned blocks); a saved weight is packed only when every value is exactly
scale * (q - zero) on it, so the packed model dequantizes to the run's weights bit for bit.
The library is an optional extra: pip install -e ".[deploy]"."""
import json
from pathlib import Path
from typing import Dict, Tuple

import torch
from loguru import logger

from .errors import LlmcError
from .files import give_plain_modes, write_text

FORMATS = ("hf", "compressed-tensors")
Grid = Tuple[torch.Tensor, torch.Tensor]  # (scale, zero) per output row, shape (rows, 1)


def require_library() -> None:
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise LlmcError("save.format: compressed-tensors needs the compressed-tensors library: "
                        "pip install -e \".[deploy]\" (or pip install compressed-tensors)") \
            from None


def dense_grids(handle, method) -> Dict[str, Grid]:
    """{Linear path: grid} of every block Linear the method quantizes, from the dense weights
    (before pruning; a streamed model's blocks are read from the checkpoint one at a time)."""
    grids = {}
    for (index, name), weight in handle.each_block_weight():
        grid = method.weight_grid(weight.data)
        if grid is not None:
            grids[f"{handle.block_path(index)}.{name}"] = grid
    return grids


def packed_tensors(weight: torch.Tensor, grid: Grid, bits: int, name: str):
    """The pack-quantized tensors of `weight` on `grid`, or an LlmcError when a value is off it
    (something changed the weights after the method quantized them)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    scale, zero = (t.to(torch.float32) for t in grid)
    exact = weight.to(torch.float32)
    levels = 2 ** bits - 1
    q = torch.clamp(torch.round(exact / scale) + zero, 0, levels)
    if not torch.equal((scale * (q - zero)).to(weight.dtype), weight):
        off = int(((scale * (q - zero)).to(weight.dtype) != weight).sum())
        raise LlmcError(f"{name}: {off} weight(s) are not on the {bits}-bit grid the method "
                        "quantized to, so they cannot be saved packed; save.format: hf saves "
                        "them as they are")
    offset = 2 ** (bits - 1)  # compressed-tensors' signed range [-2^(b-1), 2^(b-1) - 1]
    values = (q - offset).to(torch.int8)
    zero_point = (zero - offset).to(torch.int8)
    return {"weight_packed": pack_to_int32(values, bits),
            "weight_scale": scale.contiguous(),
            "weight_zero_point": pack_to_int32(zero_point, bits, packed_dim=0).contiguous(),
            "weight_shape": torch.tensor(list(weight.shape), dtype=torch.int64)}


def quantization_config(bits: int, packed) -> dict:
    """config.json's quantization_config, as the library itself writes it: the packed Linears
    named one by one (the head, MoE gates and any Linear the method left dense are not)."""
    from compressed_tensors.config import CompressionFormat
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,
                                                 QuantizationScheme, QuantizationStatus)

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="channel")
    scheme = QuantizationScheme(targets=sorted(packed), weights=weights,
                                format=CompressionFormat.pack_quantized.value)
    config = QuantizationConfig(config_groups={"group_0": scheme},
                                format=CompressionFormat.pack_quantized.value,
                                quantization_status=QuantizationStatus.COMPRESSED)
    return config.model_dump(exclude_none=False) | {"quant_method": "compressed-tensors"}


def write_packed(model_dir: Path, grids: Dict[str, Grid], bits: int) -> dict:
    """Rewrite the saved HF directory `model_dir` packed: each weight of `grids` replaced by its
    packed tensors, config.json's quantization_config added. Returns what the record says."""
    from safetensors.torch import load_file, save_file

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    index_path = model_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else None
    packed, before, after = {}, 0, 0
    for file in files:
        tensors = load_file(file)
        before += file.stat().st_size
        for path, grid in grids.items():
            name = f"{path}.weight"
            if name not in tensors:
                continue
            weight = tensors.pop(name)
            for key, tensor in packed_tensors(weight, grid, bits, path).items():
                tensors[f"{path}.{key}"] = tensor
                if index is not None:
                    index["weight_map"][f"{path}.{key}"] = file.name
            if index is not None:
                index["weight_map"].pop(name, None)
            packed[path] = file.name
        save_file(tensors, str(file), metadata={"format": "pt"})
        after += file.stat().st_size
    missing = sorted(set(grids) - set(packed))
    if missing:
        raise LlmcError(f"the saved model has no weight for {missing[0]} ({len(missing)} "
                        "quantized Linear(s) in all), so it cannot be saved packed")
    if index is not None:
        write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = quantization_config(bits, packed)
    write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    give_plain_modes(model_dir)  # safetensors writes its files 0600
    logger.info(f"saved {len(packed)} Linears packed ({bits}-bit, compressed-tensors): "
                f"{before / 2**20:.1f} -> {after / 2**20:.1f} MiB of weights")
    return {"format": "compressed-tensors", "bits": bits, "linears": len(packed),
            "weight_bytes_before": before, "weight_bytes": after}

