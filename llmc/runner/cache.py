"""Measurements worth keeping between runs (MixGPT's Hessian traces cost far more than the
pruning): a JSON file in save_path holding the value and the key it was computed for, reused
only when the key (model weights, calibration windows, settings) is the same."""
import hashlib
import json
from pathlib import Path

import torch
from loguru import logger

from ..errors import LlmcError
from ..files import write_text


def _add(digest, tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def _digest(tensors) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        _add(digest, tensor)
    return digest.hexdigest()


def weights_fingerprint(weights) -> str:
    """A digest of the weights' names, shapes, dtypes and bytes, from ((block index, Linear
    name), weight) pairs (read once, so a streamed model can hand them over block by block)."""
    names, values = [], hashlib.blake2b(digest_size=16)
    for (index, name), weight in weights:
        names.append(f"{index}.{name}")
        _add(values, weight)
    names = hashlib.blake2b("\n".join(names).encode(), digest_size=8).hexdigest()
    return f"{names}-{values.hexdigest()}"


def windows_fingerprint(windows) -> str:
    """A digest of the token ids of the windows, in order."""
    return _digest(windows)


def cached_json(path, key: dict, compute, overwrite: bool):
    """(value, reused): the value stored at `path` for `key`, or compute() stored there.
    A file for another key is replaced only with `overwrite`; otherwise that is an error, raised
    before compute() runs."""
    found = read_cached(path, key, overwrite)
    if found is not None:
        return found[0], True
    value = compute()
    write_cached(path, key, value)
    return value, False


def read_cached(path, key: dict, overwrite: bool):
    """(value,) stored at `path` for `key`, or None when there is none to reuse; a file for
    another key is an error unless `overwrite` (then it is to be replaced)."""
    path = Path(path).expanduser()
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        same = stored["key"] == json.loads(json.dumps(key))
    except (ValueError, KeyError, TypeError):
        stored, same = None, False
    if same:
        logger.info(f"reusing {path} (same model, calibration windows and settings)")
        return (stored["value"],)
    if not overwrite:
        differs = ([k for k in key if stored["key"].get(k) != key[k]]
                   if isinstance(stored, dict) and isinstance(stored.get("key"), dict)
                   else ["(unreadable file)"])
        raise LlmcError(f"'{path}' holds values for another {', '.join(map(str, differs))}; "
                        "set save.overwrite: True to replace it, or choose another "
                        "save.save_path")
    logger.warning(f"{path} is for another model, data or settings; replacing it")
    return None


def write_cached(path, key: dict, value) -> None:
    path = Path(path).expanduser()
    write_text(path, json.dumps({"key": key, "value": value}, indent=1))
    logger.info(f"wrote {path}")
