"""OWL (Yin et al., 2024): outlier-weighted layer-wise sparsity. Layers with more outliers
(Wanda scores far above their layer's mean) keep more weights; a base method (Wanda, SparseGPT or
Magnitude) then prunes each layer to its own sparsity.

Pass 1 measures the dense model (dense outputs propagate, nothing is pruned); pass 2 is the
ordinary blockwise run with the per-layer plan. The mappings follow luuyin/OWL's code.
"""
from dataclasses import dataclass

import numpy as np
import torch
from loguru import logger

from ..config.typed import setting
from ..errors import ConfigError, LlmcError
from ..registry import METHODS
from .allocation import Target, UnitPlan
from .base import Sparsifier
from .wanda import wanda_score

GRANULARITIES = ("layer", "linear")
FLOOR_SPARSITY = 0.01  # the reference's value for a layer whose sparsity maps to <= 0


def outlier_ratio(scores: torch.Tensor, m: float) -> float:
    """Percent of entries strictly above M x their mean."""
    return float((scores > torch.mean(scores) * m).sum().item()) / scores.numel() * 100


def _spread_to(ratios, lam, factor):
    """Ratios shifted to start at 0 and scaled to span lambda x factor, with the reference's
    order of operations (so the floats match it bit for bit); all zeros when the ratios are equal
    (the reference divides 0 by 0 there)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    spread = ratios.max() - ratios.min()
    if spread == 0:
        return np.zeros_like(ratios)
    return (ratios - ratios.min()) * (1 / spread * lam * factor)


def owl_sparsity(ratios, sparsity: float, lam: float) -> np.ndarray:
    """Unstructured: ratios to [0, 2 lambda], centred on density 1 - S; a layer's sparsity is
    1 - density, and one <= 0 becomes 0.01. The mean is S unless that floor applies."""
    density = _spread_to(ratios, lam, 2)
    density = density - np.mean(density) + (1 - sparsity)
    layer_sparsity = 1 - density
    layer_sparsity[layer_sparsity <= 0] = FLOOR_SPARSITY
    return layer_sparsity


def owl_n(ratios, n: int, lam: float) -> np.ndarray:
    """N:M (the reference's structured variant): ratios to [0, lambda], mean subtracted,
    rounded (half to even); a layer prunes N minus that many of every M."""
    shift = _spread_to(ratios, lam, 1)
    return n - np.round(shift - np.mean(shift))


@dataclass
class OwlCfg:
    M: float = setting(5.0, "a score is an outlier when > M x its layer's mean score")
    lambda_: float = setting(0.08, "half-width of the sparsity range (unstructured: sparsities "
                             "span S +- lambda at most); for N:M the range of N (e.g. 2 for 5:8 "
                             "-> 4:8 ... 6:8)", key="lambda")
    granularity: str = setting("layer", "`layer` (one ratio per decoder layer, as the paper) or "
                               "`linear` (one per Linear)")


def _uniform_plan_methods():
    """The methods OWL can prune with: those whose plan is uniform (they do not allocate)."""
    return sorted(name for name, method in METHODS.items()
                  if method.allocate is Sparsifier.allocate)


@METHODS.register("OWL")
class OWL(Sparsifier):
    """Composed: its own settings (base, owl) plus its base method's (e.g. OWL over SparseGPT
    reads blocksize, percdamp, wbits), see `parts`."""

    @dataclass
    class Settings(Sparsifier.Settings):
        base: str = setting("Wanda", "the method that prunes each layer to its OWL sparsity: "
                            "`Wanda`, `SparseGPT`, `Magnitude`, `RIA`; its own settings apply too")
        owl: OwlCfg = setting(factory=OwlCfg, doc="outlier-weighted layer-wise sparsity")

        def check(self, weight_cfg):
            bases = _uniform_plan_methods()
            if self.base not in bases:
                raise ConfigError(f"sparse.base '{self.base}' must be one of {', '.join(bases)}: "
                                  "the method that prunes each layer to OWL's sparsity")
            owl = self.owl
            if owl.M <= 0 or owl.lambda_ < 0:
                raise ConfigError(f"sparse.owl: M must be > 0 and lambda >= 0, got M {owl.M}, "
                                  f"lambda {owl.lambda_}")
            if owl.granularity not in GRANULARITIES:
                raise ConfigError(f"sparse.owl.granularity '{owl.granularity}' must be one of "
                                  f"{', '.join(GRANULARITIES)}")

    def __init__(self, sparse_cfg):
        super().__init__(sparse_cfg)
        self.base = METHODS[self.settings.base](sparse_cfg)
        self.needs = self.base.needs

    @classmethod
    def parts(cls, sparse_cfg):
        """OWL, then its base when that is a valid one (OWL's own check names a bad base)."""
        base = sparse_cfg.settings_for(cls).base
        return (cls,) + ((METHODS[base],) if base in _uniform_plan_methods() else ())

    @classmethod
    def scored(cls, sparse_cfg) -> bool:
        return cls._base_class(sparse_cfg).scored(sparse_cfg)

    @classmethod
    def updates(cls, sparse_cfg) -> bool:
        return cls._base_class(sparse_cfg).updates(sparse_cfg)

    @classmethod
    def _base_class(cls, sparse_cfg):
        return METHODS[sparse_cfg.settings_for(cls).base]

    @classmethod
    def calibrates(cls, sparse_cfg) -> bool:
        return True  # pass 1 needs activations, whatever the base method

    def allocate(self, weight_cfg, calibration):
        owl = self.settings.owl
        def measure(index, block, statistics):
            names = calibration.handle.linear_names(index)
            scores = {name: wanda_score(block.get_submodule(name).weight.data,
                                        statistics.for_linear(name)["input_norms"]).flatten().cpu()
                      for name in names}
            if owl.granularity == "layer":
                return {None: outlier_ratio(torch.cat(list(scores.values())), owl.M)}
            return {name: outlier_ratio(score, owl.M) for name, score in scores.items()}

        measured = calibration.measure(("input_norms",), measure)
        units = [(index, name) for index, per_unit in enumerate(measured) for name in per_unit]
        ratios = [measured[index][name] for index, name in units]
        if weight_cfg.n_m:
            n, m = weight_cfg.n_m
            unit_n = owl_n(ratios, n, owl.lambda_)
            if unit_n.min() < 0 or unit_n.max() > m - 1:
                raise LlmcError(f"sparse.owl.lambda {owl.lambda_} moves N outside 0..{m - 1} "
                                f"(layer N from {unit_n.min():g} to {unit_n.max():g}); lower it")
            targets = [Target(int(k) / m, (int(k), m)) for k in unit_n]
        else:
            unit_sparsity = owl_sparsity(ratios, weight_cfg.sparsity, owl.lambda_)
            if unit_sparsity.max() >= 1:
                raise LlmcError(f"sparse.owl.lambda {owl.lambda_} gives a layer sparsity of "
                                f"{unit_sparsity.max():.3f} >= 1; lower lambda")
            targets = [Target(float(s)) for s in unit_sparsity]
        plan = UnitPlan("owl", dict(zip(units, targets)), "outlier_ratio", ratios,
                        {"granularity": owl.granularity, "M": owl.M, "lambda": owl.lambda_})
        logger.info(f"OWL outlier ratios (%): {np.round(ratios, 3).tolist()}")
        logger.info(f"OWL sparsity per {owl.granularity}: {[str(t) for t in targets]} "
                    f"(mean {np.mean(plan.sparsities()):.4f})")
        return plan

    def prune_group(self, linears, stats, targets):
        self.base.prune_group(linears, stats, targets)

    def score(self, linear, stats):
        return self.base.score(linear, stats)

    def group_scores(self, linears, stats):
        return self.base.group_scores(linears, stats)

    def select(self, score, target):
        return self.base.select(score, target)

    def choose(self, linear, score, target):
        return self.base.choose(linear, score, target)

    @classmethod
    def records_column_orders(cls, sparse_cfg) -> bool:
        return cls._base_class(sparse_cfg).records_column_orders(sparse_cfg)

    @classmethod
    def quantization_bits(cls, sparse_cfg) -> int:
        return cls._base_class(sparse_cfg).quantization_bits(sparse_cfg)

    def weight_grid(self, weight):
        return self.base.weight_grid(weight)

    def cost(self, rows, columns):
        return self.base.cost(rows, columns)

    def describe(self) -> dict:
        return {"name": "OWL", "base": self.base.describe()}
