"""What a pruning method is: its own settings, the statistics it needs, how it allocates
sparsity, and its maths on the Linears of one input group."""
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..registry import METHODS, STATISTICS
from .allocation import Target, UniformPlan

# The attribute a method sets on a Linear whose mask is N:M only in a permuted column order
# (RIA's reallocation): that order (order[position] = original column). The runner moves it
# into the handle's column_orders, and the run saves them beside the model.
COLUMN_ORDER = "llmc_column_order"


class Sparsifier:
    """A method. Subclasses declare:
    - `Settings`: a dataclass of the keys it reads under `sparse:` (fields made with
      llmc.config.typed.setting: default and doc together), with `check(weight_cfg)` raising one
      ConfigError. The config schema and docs/config.md are assembled from these declarations.
    - `needs`: names in STATISTICS (llmc.runner.stats), gathered once per input group over all
      calibration windows; checked when the method is built (`build_method`).
    - `prune` on a single Linear (or `prune_group` when the Linears of a group share work);
      a method that chooses its mask from a per-weight score gives `score` and `select`
      instead, and then composes with the steps `sparse.refine` / `sparse.update`
      (llmc.sparse.steps): `SCORED` and `UPDATES` say which it is.
    """

    @dataclass
    class Settings:
        def check(self, weight_cfg) -> None:
            """Raise one ConfigError for a bad value, before any heavy work."""

    needs: Tuple[str, ...] = ()
    PRUNES = True  # False: it prunes no weight (`none`: a structured run alone)
    SCORED = False  # it gives `score` (a mask refinement can start from it)
    UPDATES = False  # its own prune changes the kept weights (a weight update cannot follow)

    def __init__(self, sparse_cfg):
        self.cfg = sparse_cfg  # the common keys (weight, sparsity_out)
        self.settings = sparse_cfg.settings_for(type(self))

    @classmethod
    def parts(cls, sparse_cfg) -> Tuple[type, ...]:
        """The methods whose settings a run of this one uses: itself, and any method it
        composes (OWL: its base)."""
        return (cls,)

    @classmethod
    def check_config(cls, sparse_cfg) -> None:
        """Method-specific validation, run before any heavy work: the settings of each part, in
        order (a composed method's own first, so it can vouch for what it composes); raises one
        ConfigError."""
        for part in cls.parts(sparse_cfg):
            sparse_cfg.settings_for(part).check(sparse_cfg.weight)

    @classmethod
    def scored(cls, sparse_cfg) -> bool:
        """Whether a run of it gives `score` (a composed method: its base's)."""
        return cls.SCORED

    @classmethod
    def updates(cls, sparse_cfg) -> bool:
        """Whether its pruning updates the kept weights itself (a composed method: its base's)."""
        return cls.UPDATES

    @classmethod
    def records_column_orders(cls, sparse_cfg) -> bool:
        """Whether its masks are N:M in a permuted column order it records (COLUMN_ORDER): the
        runner keeps the orders with the model (handle.column_orders), shares them between
        ranks and, streamed, writes them with each finished block."""
        return False

    @classmethod
    def quantization_bits(cls, sparse_cfg) -> int:
        """The bits of the grid its kept weights end on (`weight_grid`), or 16: not quantized."""
        return 16

    def weight_grid(self, weight):
        """(scale, zero) per output row of the grid the kept weights of the dense `weight` end
        on (w = scale * (q - zero), integer 0 <= q < 2^bits), or None when it quantizes
        nothing: what a packed save (save.format: compressed-tensors) writes."""
        return None

    @classmethod
    def check_calibration(cls, sparse_cfg, calib_cfg) -> None:
        """Checks of the method's settings against calib (e.g. windows it needs)."""

    @classmethod
    def calibrates(cls, sparse_cfg) -> bool:
        """Whether a run needs calibration data (Magnitude alone does not; with a step that
        needs statistics, such as `update: admm`, it does; nor does a structured method's pass
        run before it: sparse.structure)."""
        from .steps import step_classes  # steps compose methods: imported when asked
        return (bool(cls.needs) or any(step.needs for step in step_classes(sparse_cfg))
                or sparse_cfg.structure is not None)

    def allocate(self, weight_cfg, calibration):
        """The plan of per-Linear targets. Uniform here; OWL / MixGPT measure the dense model
        first through `calibration` (llmc.runner.Calibration), which owns the block loop."""
        return UniformPlan(weight_cfg)

    def prune_group(self, linears: Dict[str, nn.Linear], stats: Dict[str, torch.Tensor],
                    targets: Dict[str, Target]) -> None:
        """Prune Linears that share one input, and so one set of `stats`."""
        for name, linear in linears.items():
            self.prune(linear, stats, targets[name])

    def cost(self, rows: int, columns: int) -> float:
        """The relative work of pruning one rows x columns weight: under torchrun a block's
        Linears are shared out to the ranks by it (llmc.distributed.World.owners)."""
        return float(rows) * columns

    def prune(self, linear: nn.Linear, stats: Dict[str, torch.Tensor], target: Target) -> None:
        """Zero (and, for reconstruction methods, update) `linear.weight` in place: here the
        mask `select` chooses from `score`."""
        apply_mask(linear, self.choose(linear, self.score(linear, stats), target))

    def score(self, linear: nn.Linear, stats: Dict[str, torch.Tensor]) -> torch.Tensor:
        """A float32 score per weight, higher = more important (SCORED methods)."""
        raise NotImplementedError

    def group_scores(self, linears: Dict[str, nn.Linear], stats: Dict[str, torch.Tensor]):
        """(name, score) of each Linear of one input group, one at a time (a method whose score
        shares work across the group overrides it, as `prune_group` to `prune`)."""
        for name, linear in linears.items():
            yield name, self.score(linear, stats)

    def select(self, score: torch.Tensor, target: Target) -> torch.Tensor:
        """The method's mask (True = prune) from its `score`."""
        raise NotImplementedError

    def choose(self, linear: nn.Linear, score: torch.Tensor, target: Target) -> torch.Tensor:
        """`linear`'s mask from `score`: `select`'s, unless the method picks it in a permuted
        column order, which it then records on the Linear (COLUMN_ORDER)."""
        return self.select(score, target)

    def label(self) -> str:
        """The method's name in logs."""
        return type(self).__name__

    def describe(self) -> dict:
        """What results.json records about the method beyond the config."""
        return {"name": type(self).__name__}


def build_method(sparse_cfg) -> Sparsifier:
    """The configured method (followed by its steps: llmc.sparse.steps), its statistics checked
    against the known ones (a method's needs may depend on its settings, as OWL's on its base),
    before any heavy work."""
    method = METHODS.lookup(sparse_cfg.method, "sparse.method")(sparse_cfg)
    if sparse_cfg.refine or sparse_cfg.update:
        from .steps import Stepped
        method = Stepped(method, sparse_cfg)
    unknown = [need for need in method.needs if need not in STATISTICS]
    if unknown:
        raise ConfigError(f"sparse.method {sparse_cfg.method} needs the statistic "
                          f"'{unknown[0]}', which no accumulator provides; known: "
                          f"{', '.join(sorted(STATISTICS))}")
    return method


def apply_mask(linear: nn.Linear, mask: torch.Tensor) -> None:
    linear.weight.data[mask] = 0
