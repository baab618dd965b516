"""Allocation: how sparse each Linear should be. A plan maps (block index, Linear name) to a
Target: uniform, or one per unit (layer or Linear) from OWL / MixGPT. Pruning consumes targets;
only a method's allocation step builds them."""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


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


class UnitPlan:
    """Each unit its own target, a unit being a decoder layer (key (block index, None)) or one
    Linear (key (block index, name)); built by methods that measure the model first (OWL, MixGPT).

    `score_name`/`scores` record what the allocation was computed from (e.g. outlier ratios),
    one value per unit, for results.json and the plot."""

    def __init__(self, kind: str, targets: Dict[Tuple[int, Optional[str]], Target],
                 score_name: str, scores, details: Optional[dict] = None):
        self.kind, self.targets = kind, targets
        self.score_name, self.scores = score_name, [float(s) for s in scores]
        self.details = details or {}

    def target(self, block_index: int, linear_name: str) -> Target:
        found = self.targets.get((block_index, linear_name))
        return found if found is not None else self.targets[(block_index, None)]

    def sparsities(self):
        return [t.sparsity for t in self.targets.values()]

    def describe(self) -> dict:
        units = [str(i) if name is None else f"{i}.{name}" for i, name in self.targets]
        sparsity = self.sparsities()
        return {"kind": self.kind, **self.details, "units": units,
                "targets": [str(t) for t in self.targets.values()], "sparsity": sparsity,
                "mean_sparsity": sum(sparsity) / len(sparsity),
                "score_name": self.score_name, "score": self.scores}


def plan_to_dict(plan) -> dict:
    """A plan as JSON-able data (the resume state keeps it; plan_from_dict reads it back)."""
    if isinstance(plan, UniformPlan):
        target = plan.default
        return {"kind": "uniform", "sparsity": target.sparsity,
                "n_m": list(target.n_m) if target.n_m else None}
    return {"kind": "unit", "plan_kind": plan.kind, "score_name": plan.score_name,
            "scores": plan.scores, "details": plan.details,
            "targets": [[index, name, t.sparsity, list(t.n_m) if t.n_m else None]
                        for (index, name), t in plan.targets.items()]}


def plan_from_dict(data: dict):
    def target(sparsity, n_m):
        return Target(sparsity, tuple(n_m) if n_m else None)

    if data["kind"] == "uniform":
        plan = UniformPlan.__new__(UniformPlan)
        plan.default = target(data["sparsity"], data["n_m"])
        return plan
    targets = {(index, name): target(sparsity, n_m)
               for index, name, sparsity, n_m in data["targets"]}
    return UnitPlan(data["plan_kind"], targets, data["score_name"], data["scores"],
                    data["details"])
