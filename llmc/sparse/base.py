"""What a pruning method is: the statistics it needs and its math on one Linear."""
from typing import Dict, Tuple

import torch
import torch.nn as nn

from .allocation import Target


class Sparsifier:
    """Subclasses set `needs` (names in llmc.runner.stats.STATISTICS, gathered once per input
    group over all calibration windows) and implement `prune` on a single Linear."""

    needs: Tuple[str, ...] = ()

    def __init__(self, sparse_cfg):
        self.cfg = sparse_cfg

    def prune(self, linear: nn.Linear, stats: Dict[str, torch.Tensor], target: Target) -> None:
        """Zero (and, for reconstruction methods, update) `linear.weight` in place."""
        raise NotImplementedError


def apply_mask(linear: nn.Linear, mask: torch.Tensor) -> None:
    linear.weight.data[mask] = 0
