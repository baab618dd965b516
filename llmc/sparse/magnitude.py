"""Magnitude pruning (the Wanda repo's baseline): score |W|, one threshold per Linear,
or N:M per row. Needs no calibration data."""
from ..registry import METHODS
from .base import Sparsifier
from .masks import layer_threshold_mask, n_m_mask


@METHODS.register("Magnitude")
class Magnitude(Sparsifier):
    needs = ()
    SCORED = True

    def score(self, linear, stats):
        return linear.weight.data.float().abs()

    def select(self, score, target):
        if target.n_m:
            return n_m_mask(score, *target.n_m)
        return layer_threshold_mask(score, target.sparsity)
