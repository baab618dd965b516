"""Magnitude pruning (the Wanda repo's baseline): score |W|, one threshold per Linear,
or N:M per row. Needs no calibration data."""
from ..registry import METHODS
from .base import Sparsifier, apply_mask
from .masks import layer_threshold_mask, n_m_mask


@METHODS.register("Magnitude")
class Magnitude(Sparsifier):
    needs = ()

    def prune(self, linear, stats, target):
        score = linear.weight.data.float().abs()
        if target.n_m:
            mask = n_m_mask(score, *target.n_m)
        else:
            mask = layer_threshold_mask(score, target.sparsity)
        apply_mask(linear, mask)
