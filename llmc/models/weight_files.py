"""A checkpoint directory's weight files: which ones transformers will read, and whether each is
whole, judged from its header and length alone (no tensor is read).

transformers picks, in this order: model.safetensors, model.safetensors.index.json (with the
shards it names), pytorch_model.bin, pytorch_model.bin.index.json; config.json's
`transformers_weights` names the file outright.
"""
import json
import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..errors import LlmcError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
PREFERENCE = (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH, PYTORCH_INDEX)

# Bits per element of every safetensors dtype (the format's own list).
SAFETENSORS_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers
# What torch.save wrote before its zip format (torch < 1.6): a protocol-2 pickle of its magic
# number. Such files are still loadable, so they are not refused here.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


@dataclass(frozen=True)
class WeightFiles:
    """The files transformers will read for the weights: `index` (for sharded checkpoints) and
    `files` (the shards, or the one file), all present."""
    index: Optional[Path]
    files: Tuple[Path, ...]

    @property
    def all(self) -> Tuple[Path, ...]:
        return ((self.index,) if self.index else ()) + self.files


def find_weight_files(path: Path, shown: str, explicit: Optional[str] = None) -> WeightFiles:
    """The weight files of checkpoint directory `path` (model.path `shown`), each index's shards
    checked present; an LlmcError naming what is missing otherwise."""
    names = [explicit] if explicit else PREFERENCE
    for name in names:
        candidate = path / name
        if not candidate.is_file():
            continue
        if name.endswith(".index.json"):
            return WeightFiles(candidate, _shards(path, candidate, shown))
        return WeightFiles(None, (candidate,))
    raise LlmcError(_no_weights_message(path, shown, explicit))


def _no_weights_message(path: Path, shown: str, explicit: Optional[str]) -> str:
    present = sorted(entry.name for entry in path.iterdir())
    if explicit:
        return (f"model.path '{shown}': config.json names its weights '{explicit}' "
                "(transformers_weights), but there is no such file; restore it or fix config.json")
    dangling = [name for name in PREFERENCE if (path / name).is_symlink()]
    hint = "copy the checkpoint's weight files into it"
    if dangling:
        hint = (f"{dangling[0]} is a link to a file that is not there (an interrupted hub "
                "download leaves such links); download the checkpoint again")
    elif any(name.endswith(".gguf") for name in present):
        hint = ("a GGUF file is not a Hugging Face checkpoint; convert it with transformers "
                "(from_pretrained(..., gguf_file=...) then save_pretrained)")
    elif any(name.endswith(".safetensors") for name in present):
        hint = (f"its .safetensors files are not named {SAFETENSORS}, and no "
                f"{SAFETENSORS_INDEX} lists them as shards")
    listing = ", ".join(present[:12]) + (" ..." if len(present) > 12 else "") or "nothing"
    return (f"model.path '{shown}' holds no model weights: expected {SAFETENSORS}, "
            f"{SAFETENSORS_INDEX} with its shards, or {PYTORCH} (it holds: {listing}); {hint}")


def _shards(path: Path, index: Path, shown: str) -> Tuple[Path, ...]:
    """The shard files `index` (a *.index.json) maps the weights to, each present."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise LlmcError(f"model.path '{shown}': {index.name} is not a valid weight index "
                        f"(a JSON object with a weight_map of tensor -> file): "
                        f"{type(err).__name__}: {err}; restore it from the original "
                        "checkpoint") from None
    if not files or not all(isinstance(name, str) for name in files):
        raise LlmcError(f"model.path '{shown}': {index.name} maps no tensors to files; restore "
                        "it from the original checkpoint")
    root = path.resolve()
    missing = [name for name in files
               if not (path / name).is_file() or root not in (path / name).resolve().parents]
    if missing:
        raise LlmcError(f"model.path '{shown}': {index.name} lists {len(missing)} shard(s) that "
                        f"are not in the directory ({', '.join(missing[:3])}"
                        f"{' ...' if len(missing) > 3 else ''}); the download is incomplete, "
                        "fetch the missing files")
    return tuple(path / name for name in files)


def read_safetensors_header(file: Path, shown: str) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from `file`'s header, after checking that the header parses
    and that the file is exactly as long as the header says (a truncated or padded file, or one
    that is not safetensors at all, is an LlmcError naming it)."""
    size = file.stat().st_size

    def broken(why):
        return LlmcError(f"model.path '{shown}': {file.name} is not a whole safetensors file "
                         f"({why}); it is truncated or corrupt, download or convert it again")

    if size < 8:
        raise broken(f"{size} bytes, shorter than the 8-byte header length")
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(size - 8, MAX_HEADER):
            raise broken(f"its header length field says {length} bytes, the file has {size}")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise broken(f"its header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise broken("its header is not a JSON object")
    tensors, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            bits = SAFETENSORS_BITS[dtype]
            if not all(isinstance(d, int) and d >= 0 for d in shape + [begin, end]):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise broken(f"tensor '{name}' has no valid dtype, shape and data_offsets "
                         f"({str(entry)[:120]})") from None
        if end - begin != math.ceil(math.prod(shape) * bits / 8):
            raise broken(f"tensor '{name}' ({dtype} {shape}) spans {end - begin} bytes")
        tensors[name] = (dtype, tuple(shape))
        spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise broken(f"its tensors overlap or leave a gap at byte {covered} of the data")
        covered = end
    expected = 8 + length + covered
    if size != expected:
        raise broken(f"{size} bytes, but its header says {expected}")
    return tensors


def check_pytorch_file(file: Path, shown: str) -> None:
    """A pytorch_model*.bin must be a whole zip archive (torch.save's format) or a legacy torch
    pickle; anything else (truncated, garbage) is an LlmcError naming it."""
    if zipfile.is_zipfile(file):
        try:
            with zipfile.ZipFile(file) as archive:
                if any(name.endswith("data.pkl") for name in archive.namelist()):
                    return
        except (zipfile.BadZipFile, OSError):
            pass
    else:
        with open(file, "rb") as f:
            if f.read(len(LEGACY_TORCH_MAGIC)) == LEGACY_TORCH_MAGIC:
                return
    raise LlmcError(f"model.path '{shown}': {file.name} is not a whole PyTorch checkpoint (no "
                    "complete zip archive with a data.pkl, the format torch.save writes); it "
                    "is truncated or corrupt, download it again")


def check_weight_files(weights: WeightFiles, shown: str) -> Dict[str, Tuple[str, tuple]]:
    """Check every weight file's framing; returns {tensor: (dtype, shape)} over the safetensors
    files (empty for .bin checkpoints, whose tensors are only known by loading them)."""
    tensors = {}
    for file in weights.files:
        try:
            if file.name.endswith(".safetensors"):
                tensors.update(read_safetensors_header(file, shown))
            elif file.name.endswith(".bin"):
                check_pytorch_file(file, shown)
        except OSError as err:
            raise LlmcError(f"model.path '{shown}': {file.name} cannot be read "
                            f"({err.strerror or err}); check its permissions and the "
                            "disk") from None
    return tensors

