"""The ADMM weight update (Boza, 2024, "Fast and Optimal Weight Update for Pruned LLMs"), as
the reference (fmfi-compbio/admm-pruning, `AdmmPruner.fasterprune`) computes it.

Given a mask, the kept weights W' that minimise ||W X - W' X||^2 (plus a small damping) are found
by ADMM on the split W' = Z, Z masked. In coordinates where every input has unit norm
(D = diag(X^T X)^1/2, W_n = W D, A = D^-1 X^T X D^-1 + damp I):

    Z  = (W + U) * mask          the projection on the mask
    U += W - Z                   the scaled dual
    W  = (A + rho I)^-1 (A W_0 + rho (Z - U))

with (A + rho I)^-1 computed once and shared by a group's Linears (they share X^T X: the
runner's `input_gram`, gathered once per input group like a Hessian). The result is Z / D.

`admm_gradual` chooses the mask itself inside the same iterations: during the first `steps` it
re-selects it from |W + U| (the normalised magnitude: Wanda's score of the iterate), sparsity
rising on the cubic schedule s (1 - (1 - t / steps)^3) (N:M: the weakest of the unprotected,
the M - N largest of each group protected; unstructured per row: `per_out`). The reference's
default unstructured path re-selects the full sparsity at every step (its schedule's value is
unused there); so does this one.
"""
import dataclasses
from dataclasses import dataclass

import torch

from ..config.typed import setting
from ..errors import ConfigError
from .masks import n_m_mask
from .steps import Step, register

NORM_GUARD = 1e-8  # added to each input's norm, as the reference does (a dead input: 0 / 1e-8)


@dataclass
class AdmmCfg:
    iterations: int = setting(20, "ADMM iterations (the reference's iters)")
    percdamp: float = setting(0.1, "damping added to the normalised X^T X's diagonal, as a "
                              "fraction of its mean (the reference passes 0.1)")
    rho: float = setting(1.0, "the ADMM penalty (the reference's fixed 1)")


@dataclass
class AdmmGradualCfg:
    steps: int = setting(15, "the first iterations, over which the mask is re-chosen as the "
                         "sparsity rises (the reference's iterative_prune)")
    per_out: bool = setting(False, "unstructured: re-choose per output row instead of one "
                            "threshold over the matrix (the reference's per_out)")


@dataclass
class System:
    """What a group's Linears share: the input norms D, A = D^-1 X^T X D^-1 + damp I, and
    (A + rho I)^-1."""
    norm: torch.Tensor
    gram: torch.Tensor
    inverse: torch.Tensor


RHO_MAX = 1e6  # float32 keeps ~7 digits: A + rho I with diag(A) = 1 loses A past ~1e7


def admm_system(input_gram, percdamp, rho) -> System:
    norm = torch.sqrt(torch.diag(input_gram)) + NORM_GUARD
    gram = input_gram / norm
    gram = (gram.t() / norm).t()
    diag = torch.arange(gram.shape[0], device=gram.device)
    gram[diag, diag] += percdamp * torch.diag(gram).mean()
    system = gram.clone()
    system[diag, diag] += rho
    return System(norm, gram, torch.inverse(system))


def admm_update(weight, keep, system, iterations, rho, choose_mask=None):
    """The updated weight (float32, rows x columns) of `weight` with True in `keep` kept.
    `choose_mask(magnitude, iteration)`, when given, returns the mask to use from that
    iteration's |W + U| (None: keep the last one)."""
    w = (weight.float() * system.norm).t()  # columns x rows, as the reference works
    keep = keep.t() if keep is not None else None
    target = system.gram.matmul(w)
    u = torch.zeros_like(w)
    for iteration in range(iterations):
        if choose_mask is not None:
            chosen = choose_mask((w + u).abs(), iteration)
            keep = chosen if chosen is not None else keep
        z = (w + u) * keep
        u = u + (w - z)
        w = system.inverse.matmul(target + rho * (z - u))
    z = (w + u) * keep
    return z.t() / system.norm


def gradual_keep(magnitude, target, step, steps, per_out):
    """admm_gradual's mask (True = kept) at iteration `step` < `steps` from |W + U|
    (columns x rows)."""
    if target.n_m:
        n, m = target.n_m
        sparsity = n / m
    else:
        sparsity = target.sparsity
    now = sparsity - sparsity * (1 - (step + 1) / steps) ** 3
    if target.n_m:
        protected = _largest_of_each_group(magnitude.t(), n, m).t()
        ranked = magnitude.masked_fill(protected, float("inf"))
        threshold = ranked.flatten().kthvalue(int(ranked.numel() * now) + 1)[0]
        return ranked >= threshold
    if per_out:
        threshold = torch.sort(magnitude, dim=0)[0][int(magnitude.shape[0] * now)]
        return magnitude >= threshold.unsqueeze(0)
    keep = torch.ones(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
    lowest = torch.topk(magnitude.flatten(), int(magnitude.numel() * sparsity), largest=False)
    keep[lowest.indices] = False
    return keep.reshape(magnitude.shape)


def _largest_of_each_group(magnitude, n, m):
    """True at the M - N largest of every M consecutive columns of each row, by the reference's
    ascending sort (so ties fall as its do); a trailing partial group by n_m_mask."""
    rows, columns = magnitude.shape
    full = columns - columns % m
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    if full < columns:
        keep[:, full:] = ~n_m_mask(magnitude[:, full:], n, m)
    if full:
        order = torch.sort(magnitude[:, :full].reshape(-1, m), dim=1)[1]
        groups = torch.zeros(order.shape, dtype=torch.bool, device=magnitude.device)
        groups.scatter_(1, order[:, n:], True)
        keep[:, :full] = groups.reshape(rows, full)
    return keep


def _check_admm(cfg: AdmmCfg):
    if cfg.iterations < 1 or cfg.percdamp < 0 or not 0 < cfg.rho <= RHO_MAX:
        raise ConfigError(f"sparse.admm: iterations must be >= 1, percdamp >= 0 and rho in (0, "
                          f"{RHO_MAX:g}], got {cfg.iterations}, {cfg.percdamp:g}, {cfg.rho:g} "
                          "(the input Gram matrix is normalised to a unit diagonal: beyond "
                          f"{RHO_MAX:g} it vanishes beside rho in float32, and the update with it)")


class _Admm(Step):
    needs = ("input_gram",)

    def prepare(self, stats) -> System:
        cfg = self.settings.admm
        return admm_system(stats["input_gram"], cfg.percdamp, cfg.rho)

    def cost(self, rows, columns):
        return float(self.settings.admm.iterations) * rows * columns * columns

    def describe(self):
        return {"name": self.NAME, **dataclasses.asdict(self.settings.admm)}


@register("admm", "update")
class ADMM(_Admm):
    @dataclass
    class Settings:
        admm: AdmmCfg = setting(factory=AdmmCfg, doc="ADMM weight update")

        def check(self, weight_cfg):
            _check_admm(self.admm)

    def update(self, weight, mask, system, target, name):
        cfg = self.settings.admm
        return admm_update(weight, ~mask, system, cfg.iterations, cfg.rho)


@register("admm_gradual", "update")
class ADMMGradual(_Admm):
    USES_MASK = False

    @dataclass
    class Settings(ADMM.Settings):  # admm's keys, and its own
        admm_gradual: AdmmGradualCfg = setting(factory=AdmmGradualCfg,
                                               doc="ADMM with gradual mask selection")

        def check(self, weight_cfg):
            super().check(weight_cfg)
            steps = self.admm_gradual.steps
            if not 1 <= steps <= self.admm.iterations:
                raise ConfigError(f"sparse.admm_gradual.steps must be in 1..admm.iterations "
                                  f"({self.admm.iterations}), got {steps}")
            if self.admm_gradual.per_out and weight_cfg.n_m:
                raise ConfigError("sparse.admm_gradual.per_out applies to unstructured "
                                  "sparsity only; remove it")

    @classmethod
    def check_with(cls, sparse_cfg, method_cls):
        scorer = method_cls.parts(sparse_cfg)[-1].__name__  # OWL over Wanda: Wanda
        if scorer != "Wanda" or sparse_cfg.in_effect().get("use_variant"):
            raise ConfigError(f"sparse.update: admm_gradual chooses its masks by Wanda's score of "
                              f"its iterates, not {sparse_cfg.method}'s; use method: Wanda (or "
                              "OWL over Wanda, for its allocation), without use_variant")
        if sparse_cfg.refine:
            raise ConfigError("sparse.update: admm_gradual chooses its own masks, so "
                              f"sparse.refine: {sparse_cfg.refine} would be ignored; remove one")

    def update(self, weight, mask, system, target, name):
        cfg, gradual = self.settings.admm, self.settings.admm_gradual

        def choose(magnitude, iteration):
            if iteration >= gradual.steps:
                return None
            return gradual_keep(magnitude, target, iteration, gradual.steps, gradual.per_out)

        return admm_update(weight, None, system, cfg.iterations, cfg.rho, choose)

    def describe(self):
        return {**super().describe(), **dataclasses.asdict(self.settings.admm_gradual)}
