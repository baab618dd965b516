"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024, "Plug-and-Play"):

    score_ij = (|W_ij| / sum_k |W_kj|  +  |W_ij| / sum_k |W_ik|) * ||X_j||_2 ^ a

the weight's share of its input column's total plus its share of its output row's total,
times the activation norm (||X_j||_2^2: Wanda's input_norms) to the power a (0.5 by default).
Masks as the reference's `prune_ria`: unstructured, one threshold over the whole matrix
(`per_outneuron`: a fixed count per output row, Wanda's rule); N:M, the n lowest of every m,
optionally in a permuted column order (`reallocation`, `lsa`: llmc.sparse.permutation)."""
from dataclasses import dataclass

import torch

from ..config.typed import setting
from ..errors import ConfigError
from ..registry import METHODS
from .base import COLUMN_ORDER, Sparsifier
from .masks import layer_threshold_mask, n_m_mask, row_lowest_mask
from .permutation import check_scipy, permuted_n_m_mask


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
    reallocation: bool = setting(False, "N:M: choose the mask in a permuted column order (the "
                                 "reference's heuristic channel reallocation, --reallocation); "
                                 "the order is saved beside the model (column_orders.safetensors)")
    lsa: bool = setting(False, "N:M with reallocation: refine the order by M rounds of linear "
                        "sum assignment (--lsa; needs scipy: the `ria` extra; slow on wide "
                        "Linears)")


@METHODS.register("RIA")
class RIA(Sparsifier):
    @dataclass
    class Settings(Sparsifier.Settings):
        ria: RiaCfg = setting(factory=RiaCfg, doc="relative importance and activations")

        def check(self, weight_cfg):
            ria = self.ria
            if ria.per_outneuron and weight_cfg.n_m is not None:
                raise ConfigError("sparse.ria.per_outneuron applies to unstructured sparsity "
                                  "only; remove it or set sparsity_type: unstructured")
            if (ria.reallocation or ria.lsa) and weight_cfg.n_m is None:
                raise ConfigError("sparse.ria.reallocation and lsa apply to N:M sparsity only; "
                                  "remove them or set sparsity_type: N:M (e.g. 2:4)")
            if ria.lsa and not ria.reallocation:
                raise ConfigError("sparse.ria.lsa refines the channel reallocation; set "
                                  "reallocation: True too")
            if ria.lsa:
                check_scipy()

    needs = ("input_norms",)
    SCORED = True

    def score(self, linear, stats):
        return ria_score(linear.weight.data, stats["input_norms"], self.settings.ria.a)

    @classmethod
    def records_column_orders(cls, sparse_cfg) -> bool:
        return sparse_cfg.settings_for(cls).ria.reallocation

    def choose(self, linear, score, target):
        if not (target.n_m and self.settings.ria.reallocation):
            return self.select(score, target)
        mask, order = permuted_n_m_mask(score, *target.n_m, self.settings.ria.lsa)
        setattr(linear, COLUMN_ORDER, order)
        return mask

    def select(self, score, target):
        if target.n_m:
            return n_m_mask(score, *target.n_m)
        if self.settings.ria.per_outneuron:
            return row_lowest_mask(score, target.sparsity)
        return layer_threshold_mask(score, target.sparsity)
