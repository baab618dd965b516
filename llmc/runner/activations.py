"""Calibration activations in a memory-mapped file (`base.offload_activations: disk`).

At 70B scale the hidden states of 128 windows of 2048 tokens take 4.3 GB in fp16, and they wait
between blocks while a block is on the device. In a file mapped into memory they take no RAM
of their own: the kernel pages them in while a batch is read and writes them back when memory
is short. Each batch is a view into the one file; a block's output for batch j replaces batch
j's input in place once batch j's forward is done, so the file is written over as the blocks go.
"""
import math
import os
from pathlib import Path
from typing import List, Tuple

import torch
from loguru import logger


class ActivationFile:
    """One file under `directory` holding a tensor of each shape in `shapes` (dtype `dtype`),
    handed out as views by `hold`; `close` removes the file."""

    def __init__(self, directory: Path, shapes: List[Tuple[int, ...]], dtype: torch.dtype):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "activations.bin"
        self.shapes, self.dtype = shapes, dtype
        numel = sum(math.prod(shape) for shape in shapes)
        element = torch.empty((), dtype=dtype).element_size()
        with open(self.path, "wb") as f:  # sparse: no block is written until a batch is
            f.truncate(numel * element)
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
