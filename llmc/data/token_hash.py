"""sha256 digests of token ids, for the reproducibility record: two runs that calibrated (or
evaluated) on the same ids in the same order and shapes have the same digest, whatever the
device, dtype or machine.

The bytes hashed, for each tensor in order: its number of dimensions, then each dimension, then
its ids in row-major order, all as int64 little-endian. Anyone can recompute a digest from the
ids with numpy (`np.asarray(ids, dtype='<i8').tobytes()`), and two lists whose ids run the same
but are cut into tensors differently hash differently.
"""
import hashlib
from typing import Iterable

INT64_LE = "<i8"


def token_ids_sha256(batches: Iterable) -> str:
    """Hex sha256 of the calibration batches (integer tensors), in order, with their shapes."""
    digest = hashlib.sha256()
    for batch in batches:
        _add(digest, batch)
    return digest.hexdigest()


def token_stream_sha256(tokens) -> str:
    """Hex sha256 of one evaluation token stream (an integer tensor, e.g. of shape (1, N)),
    with its shape: the digest of the one-tensor list [tokens]."""
    return token_ids_sha256([tokens])


def _add(digest, tensor) -> None:
    import numpy as np

    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"token ids must be integers, got a {tensor.dtype} tensor")
    ids = tensor.detach().cpu().contiguous().numpy().astype(INT64_LE, copy=False)
    digest.update(np.asarray([ids.ndim, *ids.shape], dtype=INT64_LE).tobytes())
    digest.update(ids.tobytes(order="C"))
