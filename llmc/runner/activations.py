"""Calibration activations in a memory-mapped file (`base.offload_activations: disk`).

At 70B scale the hidden states of 128 windows of 2048 tokens take 4.3 GB in fp16, and they wait
between blocks while a block is on the device. In a file mapped into memory they take no RAM
of their own: the kernel pages them in while a batch is read and writes them back when memory
is short. Each batch is a view into the one file; a block's output for batch j replaces batch
j's input in place once batch j's forward is done, so the file is written over as the blocks go.
"""
import errno
import math
import os
from pathlib import Path
from typing import List, Tuple

import torch
from loguru import logger

from ..errors import LlmcError
from ..files import create_file_here


def reserve(f, size: int, path: Path) -> None:
    """Give the file `size` bytes of disk now. A mapped file's pages are written back later, and
    a page the filesystem has no room for kills the process with SIGBUS, saying nothing: so the
    space is allocated before the file is mapped, and a full disk is an OSError naming it here
    (which the run reports as the disk-full line)."""
    if size <= 0:
        return
    try:
        os.posix_fallocate(f.fileno(), 0, size)
        return
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(err.errno, err.strerror, str(path)) from None
    # a filesystem that cannot allocate ahead: at least refuse a file larger than its room
    stats = os.statvfs(path.parent)
    if stats.f_bavail * stats.f_frsize < size:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    f.truncate(size)


class ActivationFile:
    """One file under `directory` holding a tensor of each shape in `shapes` (dtype `dtype`),
    handed out as views by `hold`; `close` removes the file."""

    def __init__(self, directory: Path, shapes: List[Tuple[int, ...]], dtype: torch.dtype):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if directory.is_symlink():
            raise LlmcError(f"{directory} is a symbolic link to '{os.readlink(directory)}': "
                            "llmc never writes through a link in save.save_path/.llmc/; remove "
                            "it or choose another save.save_path")
        self.path = directory / "activations.bin"
        self.shapes, self.dtype = shapes, dtype
        numel = sum(math.prod(shape) for shape in shapes)
        element = torch.empty((), dtype=dtype).element_size()
        with create_file_here(self.path) as f:
            reserve(f, numel * element, self.path)
        self._flat = torch.from_file(str(self.path), shared=True, size=numel, dtype=dtype)
        self._offsets, offset = [], 0
        for shape in shapes:
            self._offsets.append(offset)
            offset += math.prod(shape)
        logger.info(f"activations on disk: {self.path} ({numel * element / 2**20:.0f} MiB)")

    def hold(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Batch `index`'s tensor: `hidden` copied into its place in the file."""
        shape = self.shapes[index]
        if tuple(hidden.shape) != tuple(shape) or hidden.dtype != self.dtype:
            raise RuntimeError(f"batch {index}'s hidden states are {tuple(hidden.shape)} "
                               f"{hidden.dtype}, the file was laid out for {shape} {self.dtype}")
        start = self._offsets[index]
        view = self._flat[start:start + math.prod(shape)].view(shape)
        view.copy_(hidden)
        return view

    def close(self) -> None:
        self._flat = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __str__(self) -> str:
        return f"disk ({self.path})"
