"""`sparse.method: none`: no unstructured pruning, for a run that only removes structure
(sparse.structure: blocks, heads, channels)."""
from dataclasses import dataclass

from ..errors import ConfigError
from ..registry import METHODS
from .base import Sparsifier


@METHODS.register("none")
class NoPruning(Sparsifier):
    needs = ()
    PRUNES = False

    @dataclass
    class Settings(Sparsifier.Settings):
        def check(self, weight_cfg):
            if weight_cfg.sparsity != 0 or weight_cfg.sparsity_type != "unstructured":
                raise ConfigError("sparse.method none prunes no weights, so its target is "
                                  "none either: set sparse.weight.sparsity: 0 (unstructured), "
                                  "or choose a method")

    def prune(self, linear, stats, target):
        """Nothing: the weights stay as they are."""

    def label(self) -> str:
        return "none"

    def describe(self) -> dict:
        return {"name": "none"}
