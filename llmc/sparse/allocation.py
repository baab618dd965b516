"""Allocation: how sparse each Linear should be. A plan maps (block index, Linear name) to a
Target; uniform here, per-layer from OWL / MixGPT. Methods consume targets, never build them."""
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Target:
    sparsity: float  # fraction of weights to zero (for N:M, n/m)
    n_m: Optional[Tuple[int, int]] = None  # (N, M): N of every M consecutive weights zeroed

    def __str__(self):
        return f"{self.n_m[0]}:{self.n_m[1]}" if self.n_m else f"{self.sparsity:.4f}"


class UniformPlan:
    """Every Linear gets the config's sparsity (or N:M)."""

    def __init__(self, weight_cfg):
        n_m = weight_cfg.n_m
        self.default = Target(n_m[0] / n_m[1] if n_m else weight_cfg.sparsity, n_m)

    def target(self, block_index: int, linear_name: str) -> Target:
        return self.default

    def describe(self) -> dict:
        return {"kind": "uniform", "target": str(self.default)}
