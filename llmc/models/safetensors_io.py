"""Reading one tensor of a safetensors file, and writing a file tensor by tensor.

The streamed model reads a part's tensors straight into fresh tensors (one read per tensor, no
memory map, so the process holds each byte once), and writes a pruned block's tensors one after
the other into a new file that is fsync'ed and renamed into place: a kill leaves the old file
or the new one, never half of one. No second copy of a part is made in RAM on either side
(`safetensors.torch.save_file` first serialises everything into one bytes object).
"""
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch

from ..files import current_umask, fsync_dir, timed_fsync

# safetensors dtype name <-> torch dtype, for the dtypes a model's weights come in.
TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {dtype: name for name, dtype in TORCH_DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: its file, dtype, shape and absolute byte offset."""
    file: Path
    dtype: torch.dtype
    shape: Tuple[int, ...]
    offset: int
    nbytes: int


def tensor_entries(file: Path) -> Dict[str, TensorEntry]:
    """{name: TensorEntry} from `file`'s header (its framing was checked by the preflight)."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    entries = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = TORCH_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {name} is {entry['dtype']}, which llmc does not stream")
        entries[name] = TensorEntry(file, dtype, tuple(entry["shape"]), 8 + length + begin,
                                    end - begin)
    return entries


def read_tensor(entry: TensorEntry) -> torch.Tensor:
    """A new CPU tensor holding `entry`'s bytes."""
    tensor = torch.empty(entry.shape, dtype=entry.dtype)
    if entry.nbytes:
        view = memoryview(_bytes_of(tensor).numpy())
        with open(entry.file, "rb", buffering=0) as f:
            f.seek(entry.offset)
            done = 0
            while done < entry.nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise OSError(f"{entry.file} ends before its tensor data (truncated)")
                done += got
    return tensor


@dataclass
class Pieces:
    """A tensor of `shape` written from `parts` whose bytes, one after the other, are its bytes
    (a fused experts tensor from its experts' matrices: llmc.models.checkpoint_layout), so no
    copy of the whole is made."""
    shape: Tuple[int, ...]
    parts: List[torch.Tensor]


def _as_parts(name: str, tensor: Union[torch.Tensor, Pieces]):
    """(dtype, shape, [contiguous CPU tensors whose bytes are the tensor's, in order])."""
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().to("cpu").contiguous()
        return tensor.dtype, tensor.shape, [tensor]
    parts = [part.detach().to("cpu").contiguous() for part in tensor.parts]
    if len({part.dtype for part in parts}) != 1 or \
            sum(part.numel() for part in parts) != torch.Size(tensor.shape).numel():
        raise ValueError(f"{name}: pieces of {[tuple(p.shape) for p in parts]} do not make one "
                         f"tensor of shape {list(tensor.shape)}")
    return parts[0].dtype, torch.Size(tensor.shape), parts


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def safetensors_header(entries) -> Tuple[bytes, int]:
    """(the JSON header, padded to 8 bytes, and the bytes of tensor data) of a safetensors file
    holding (name, dtype, shape) `entries` in that order: the shapes suffice, so a writer can
    produce each tensor only when its turn comes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in entries:
        nbytes = int(torch.Size(shape).numel()) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + b" " * (-len(encoded) % 8), offset  # the data aligned to 8 bytes


def write_tensors(path: Path, tensors: Iterable[Tuple[str, Union[torch.Tensor, Pieces]]],
                  timing: Optional[dict] = None, digest=None) -> int:
    """Write (name, tensor or Pieces) pairs to `path` as a safetensors file (in that order),
    via a temporary name, fsync'ed and renamed into place. Returns the bytes of tensor data. With
    `timing`, the seconds spent in fsync are added to timing["fsync"]; with `digest` (a hashlib
    object), every byte written is fed to it, so the file's sha256 costs no second read."""
    tensors = [(name, *_as_parts(name, t)) for name, t in tensors]
    encoded, offset = safetensors_header([(name, dtype, shape) for name, dtype, shape, _ in
                                          tensors])
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            for chunk in (struct.pack("<Q", len(encoded)), encoded,
                          *(memoryview(_bytes_of(part).numpy()) for *_, parts in tensors
                            for part in parts if part.numel())):
                f.write(chunk)
                if digest is not None:
                    digest.update(chunk)
            f.flush()
            timed_fsync(f.fileno(), timing)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    fsync_dir(path.parent, timing)
    return offset

