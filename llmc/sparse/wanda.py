"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||, where ||X_j||^2 is the mean over calibration
windows of input column j's squared L2 norm; compared within each output row."""
from dataclasses import dataclass

import torch

from ..config.typed import setting
from ..errors import ConfigError
from ..registry import METHODS
from .base import Sparsifier
from .masks import n_m_mask, row_lowest_mask


def wanda_score(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    return weight.float().abs() * torch.sqrt(input_norms.reshape(1, -1))


def _mask_for_alpha(alpha, sorted_score, cumulative, row_sums, score):
    """Prune, per row, the lowest scores whose running sum stays within alpha * row sum."""
    within = cumulative <= (row_sums * alpha).reshape(-1, 1)
    kept = within.sum(dim=1, keepdim=True)
    threshold = torch.gather(sorted_score, 1, (kept - 1).clamp(min=0))
    # a row where even the smallest score exceeds the budget prunes nothing
    threshold = torch.where(kept > 0, threshold, torch.full_like(threshold, -float("inf")))
    mask = score <= threshold
    # A float32 tensor, as the reference computes it: in float64 the bisection's stopping test
    # |achieved - sparsity| > tolerance can come out the other way near the tolerance.
    return mask, mask.sum() / mask.numel()


def variant_mask(score: torch.Tensor, sparsity: float, tolerance: float = 0.001):
    """The Wanda variant: bisect alpha (start 0.4 in [0, 0.8]) until the achieved sparsity is
    within `tolerance` of the target or the interval is narrower than 0.001. Returns (mask, alpha)."""
    sorted_score = torch.sort(score, dim=-1, stable=True)[0]
    cumulative = torch.cumsum(sorted_score, dim=1)
    row_sums = score.sum(dim=1)
    alpha, low, high = 0.4, 0.0, 0.8
    mask, achieved = _mask_for_alpha(alpha, sorted_score, cumulative, row_sums, score)
    while torch.abs(achieved - sparsity) > tolerance and high - low >= 0.001:
        if achieved > sparsity:
            alpha, high = (alpha + low) / 2.0, alpha
        else:
            alpha, low = (alpha + high) / 2.0, alpha
        mask, achieved = _mask_for_alpha(alpha, sorted_score, cumulative, row_sums, score)
    return mask, alpha


@METHODS.register("Wanda")
class Wanda(Sparsifier):
    @dataclass
    class Settings(Sparsifier.Settings):
        use_variant: bool = setting(False, "unstructured only: the paper's variant, a per-row "
                                    "alpha search instead of a fixed count per row")

        def check(self, weight_cfg):
            if self.use_variant and weight_cfg.n_m is not None:
                raise ConfigError("sparse.use_variant applies to unstructured sparsity only; "
                                  "remove it or set sparsity_type: unstructured")

    needs = ("input_norms",)
    SCORED = True

    def score(self, linear, stats):
        return wanda_score(linear.weight.data, stats["input_norms"])

    def select(self, score, target):
        if target.n_m:
            return n_m_mask(score, *target.n_m)
        if self.settings.use_variant:
            return variant_mask(score, target.sparsity)[0]
        return row_lowest_mask(score, target.sparsity)
