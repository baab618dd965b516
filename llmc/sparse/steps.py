"""Steps after a method's score: `sparse.refine` (a mask refinement, e.g. DSnoT) and
`sparse.update` (a weight update under the mask, e.g. ADMM), so that

    method: OWL, base: Wanda, refine: dsnot, update: admm

is OWL's allocation, Wanda's score, DSnoT's mask and ADMM's weights. A step is registered in
STEPS with its kind; like a method it declares its `Settings` (keys under `sparse:`) and the
statistics it `needs`, which the composed method adds to what the runner gathers (checked when
the method is built, before any heavy work). The method must give a score (`Sparsifier.scored`);
an update cannot follow a method that updates the weights itself (SparseGPT).
"""
from dataclasses import dataclass
from typing import Tuple

from ..errors import ConfigError
from ..registry import STEPS
from .base import Sparsifier, apply_mask

KINDS = ("refine", "update")


class Step:
    KIND = ""  # "refine" or "update"
    USES_MASK = True  # an update that chooses its own masks (admm_gradual) says False

    @dataclass
    class Settings:
        def check(self, weight_cfg) -> None:
            """Raise one ConfigError for a bad value, before any heavy work."""

    needs: Tuple[str, ...] = ()

    def __init__(self, sparse_cfg):
        self.settings = sparse_cfg.settings_for(type(self))

    @classmethod
    def check_with(cls, sparse_cfg, method_cls) -> None:
        """Refuse a composition this step cannot honour (one ConfigError)."""

    def cost(self, rows, columns) -> float:
        """The relative work on one rows x columns weight (see Sparsifier.cost)."""
        return 0.0

    def describe(self) -> dict:
        return {"name": self.NAME}


def register(name, kind):
    """Register a Step class under `name` (its YAML value) as a `kind` step."""
    def add(cls):
        cls.NAME, cls.KIND = name, kind
        return STEPS.register(name)(cls)
    return add


def step_classes(sparse_cfg):
    """The Step classes the config names, in order (refine, then update); unknown names or a
    step of the other kind are one ConfigError."""
    found = []
    for kind in KINDS:
        name = getattr(sparse_cfg, kind)
        if name is None:
            continue
        of_kind = sorted(n for n in STEPS if STEPS[n].KIND == kind)
        if name not in of_kind:
            raise ConfigError(f"sparse.{kind}: unknown {kind} step '{name}'; known: "
                              f"{', '.join(of_kind)} (or null)")
        found.append(STEPS[name])
    return tuple(found)


def check_steps(sparse_cfg, method_cls) -> None:
    """Each step's settings, then the composition: the method must give a score, an update
    must not follow a method that updates weights itself."""
    steps = step_classes(sparse_cfg)
    for step in steps:
        sparse_cfg.settings_for(step).check(sparse_cfg.weight)
        if not method_cls.scored(sparse_cfg):
            raise ConfigError(f"sparse.{step.KIND}: {step.NAME} starts from a per-weight score, "
                              f"which {sparse_cfg.method} does not give; use Wanda, RIA, "
                              "Magnitude (or OWL over one of them)")
        if step.KIND == "update" and method_cls.updates(sparse_cfg):
            raise ConfigError(f"sparse.update: {step.NAME} cannot follow {sparse_cfg.method}, "
                              "which updates the kept weights itself; use a method that only "
                              "masks (Wanda, RIA, Magnitude) or remove sparse.update")
        step.check_with(sparse_cfg, method_cls)


class Stepped(Sparsifier):
    """A method followed by its steps: per Linear, the method's score, the refined mask (or the
    method's own), then the updated weights (or the mask applied). Allocation is the method's."""

    def __init__(self, method, sparse_cfg):
        self.cfg, self.method = sparse_cfg, method
        steps = {step.KIND: step(sparse_cfg) for step in step_classes(sparse_cfg)}
        self.refine, self.update = steps.get("refine"), steps.get("update")
        needs = list(method.needs)
        for step in steps.values():
            needs += [need for need in step.needs if need not in needs]
        self.needs = tuple(needs)

    def calibrates(self, sparse_cfg) -> bool:
        return self.method.calibrates(sparse_cfg)

    def records_column_orders(self, sparse_cfg) -> bool:
        return self.method.records_column_orders(sparse_cfg)

    def allocate(self, weight_cfg, calibration):
        return self.method.allocate(weight_cfg, calibration)

    def cost(self, rows, columns):
        """The method's work plus the update's (ADMM's iterations), for torchrun's sharing."""
        extra = self.update.cost(rows, columns) if self.update else 0.0
        return self.method.cost(rows, columns) + extra

    def prune_group(self, linears, stats, targets):
        prepared = self.update.prepare(stats) if self.update else None  # once per input group
        if self.update is None or self.update.USES_MASK:
            masks = self._masks(linears, stats, targets)
        else:  # the update chooses its own masks: no score needed
            masks = ((name, None) for name in linears)
        for name, mask in masks:
            linear, target = linears[name], targets[name]
            if self.update:
                weight = self.update.update(linear.weight.data, mask, prepared, target, name)
                linear.weight.data.copy_(weight)
            else:
                apply_mask(linear, mask)

    def _masks(self, linears, stats, targets):
        """(name, mask) per Linear, one at a time: the refined mask, or the method's own."""
        for name, score in self.method.group_scores(linears, stats):
            linear, target = linears[name], targets[name]
            if self.refine:
                yield name, self.refine.refine(linear.weight.data, score, stats, target, name)
            else:
                yield name, self.method.choose(linear, score, target)

    def label(self) -> str:
        steps = [step.NAME for step in (self.refine, self.update) if step is not None]
        return " + ".join([self.method.label()] + steps)

    def describe(self) -> dict:
        described = self.method.describe()
        for step in (self.refine, self.update):
            if step is not None:
                described[step.KIND] = step.describe()
        return described
