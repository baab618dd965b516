"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024, "Plug-and-Play"):

    score_ij = (|W_ij| / sum_k |W_kj|  +  |W_ij| / sum_k |W_ik|) * ||X_j||_2 ^ a

the weight's share of its input column's total plus its share of its output row's total,
times the activation norm (||X_j||_2^2: Wanda's input_norms) to the power a (0.5 by default).
Masks as the reference's `prune_ria`: unstructured, one threshold over the whole matrix
(`per_outneuron`: a fixed count per output row, Wanda's rule); N:M, the n lowest of every m.
The reference's channel reallocation and linear-sum-assignment permutation for N:M are not
implemented (docs/methods.md)."""
from dataclasses import dataclass

import torch

from ..config_io import setting
from ..errors import ConfigError
from ..registry import METHODS
from .base import Sparsifier, apply_mask
from .masks import layer_threshold_mask, n_m_mask, row_lowest_mask


def ria_score(weight: torch.Tensor, input_norms: torch.Tensor, a: float) -> torch.Tensor:
    """The reference's W_metric, in float32, operations in its order."""
    magnitude = weight.float().abs()
    relative = (magnitude / torch.sum(magnitude, dim=0)
                + magnitude / torch.sum(magnitude, dim=1).reshape(-1, 1))
    return relative * torch.sqrt(input_norms.reshape(1, -1)) ** a


@dataclass
class RiaCfg:
    a: float = setting(0.5, "exponent of the activation norm ||X_j||_2 (the reference's --a)")
    per_outneuron: bool = setting(False, "unstructured: prune a fixed count per output row "
                                  "(the reference's --per_outneuron) instead of one threshold "
                                  "over the whole matrix")


@METHODS.register("RIA")
class RIA(Sparsifier):
    @dataclass
    class Settings(Sparsifier.Settings):
        ria: RiaCfg = setting(factory=RiaCfg, doc="relative importance and activations")

        def check(self, weight_cfg):
            if self.ria.per_outneuron and weight_cfg.n_m is not None:
                raise ConfigError("sparse.ria.per_outneuron applies to unstructured sparsity "
                                  "only; remove it or set sparsity_type: unstructured")

    needs = ("input_norms",)

    def prune(self, linear, stats, target):
        score = ria_score(linear.weight.data, stats["input_norms"], self.settings.ria.a)
        if target.n_m:
            mask = n_m_mask(score, *target.n_m)
        elif self.settings.ria.per_outneuron:
            mask = row_lowest_mask(score, target.sparsity)
        else:
            mask = layer_threshold_mask(score, target.sparsity)
        apply_mask(linear, mask)
