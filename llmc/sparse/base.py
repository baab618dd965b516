"""What a pruning method is: the statistics it needs, how it allocates sparsity, and its math
on the Linears of one input group."""
from typing import Dict, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..registry import METHODS
from .allocation import Target, UniformPlan


class Sparsifier:
    """Subclasses set `needs` (names in llmc.runner.stats.STATISTICS, gathered once per input
    group over all calibration windows) and implement `prune` on a single Linear (or
    `prune_group` when the Linears of a group can share work)."""

    needs: Tuple[str, ...] = ()
    quantizes = False  # honours sparse.wbits

    def __init__(self, sparse_cfg):
        self.cfg = sparse_cfg

    @classmethod
    def check_config(cls, sparse_cfg) -> None:
        """Method-specific validation, run before any heavy work; raises one ConfigError."""
        if sparse_cfg.wbits != 16 and not cls.quantizes:
            able = sorted(name for name, method in METHODS.items() if method.quantizes)
            raise ConfigError(f"sparse.wbits {sparse_cfg.wbits}: {cls.__name__} does not "
                              f"quantize; remove wbits (16 = off) or use {' or '.join(able)}")

    @classmethod
    def check_calibration(cls, sparse_cfg, calib_cfg) -> None:
        """Checks of the method's settings against calib (e.g. windows it needs)."""

    @classmethod
    def calibrates(cls, sparse_cfg) -> bool:
        """Whether a run needs calibration data (Magnitude alone does not)."""
        return bool(cls.needs)

    def allocate(self, weight_cfg, calibration):
        """The plan of per-Linear targets. Uniform here; OWL / MixGPT measure the dense model
        first through `calibration` (llmc.runner.Calibration), which owns the block loop."""
        return UniformPlan(weight_cfg)

    def prune_group(self, linears: Dict[str, nn.Linear], stats: Dict[str, torch.Tensor],
                    targets: Dict[str, Target]) -> None:
        """Prune Linears that share one input, and so one set of `stats`."""
        for name, linear in linears.items():
            self.prune(linear, stats, targets[name])

    def prune(self, linear: nn.Linear, stats: Dict[str, torch.Tensor], target: Target) -> None:
        """Zero (and, for reconstruction methods, update) `linear.weight` in place."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What results.json records about the method beyond the config."""
        return {"name": type(self).__name__}


def apply_mask(linear: nn.Linear, mask: torch.Tensor) -> None:
    linear.weight.data[mask] = 0
