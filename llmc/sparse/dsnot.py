"""DSnoT, Dynamic Sparse No Training (Zhang et al., ICLR 2024): a training-free refinement of
the mask a method's score gives, as the reference (zyxxmu/DSnoT, `prune_DSnoT`) computes it.

A pruned weight W_ij shifts output i by W_ij x_j; over the calibration windows its expected
effect is W_ij * E[sum_t x_jt] (`input_sums`). Per output row, the reconstruction error is the
sum of that over the pruned weights. Each cycle regrows one pruned weight and prunes one kept
weight, chosen to shrink the error:
- regrow: the pruned weight with the largest (error > 0) or smallest (error <= 0) effect,
  divided by the input's variance to the power `pow_of_var_regrowing` (stable inputs first);
- prune, unstructured: among the kept weights in Wanda order (least important first), those with
  a negative effect in that order, then the positive ones from the least important end; an error
  > 0 takes the next negative, an error < 0 the next positive;
- prune, N:M: the kept weight of lowest score in the regrown weight's group of M (so every group
  keeps its count), and only while the swap leaves the error's sign unchanged.
A row stops once |error| <= `update_threshold` (or the swap fails the N:M sign test); all stop
after `max_cycle_time` cycles. Where the reference's pointers run past a row's candidates (a
row narrower than the cycles, or a group with no kept weight left), its swap would undo an
earlier one or change the row's count; here that row stops instead (docs/methods.md).
"""
import dataclasses
from dataclasses import dataclass

import torch

from ..config.typed import setting
from ..errors import ConfigError
from .masks import n_m_mask, row_lowest_mask
from .steps import Step, register
from .wanda import wanda_score

SKIP_LAYERS = ("mlp", "self_attn", "no_skip")


@dataclass
class DsnotCfg:
    max_cycle_time: int = setting(50, "most swaps per row (the reference's --max_cycle_time)")
    update_threshold: float = setting(0.1, "a row stops once its reconstruction error's size "
                                      "is at most this (--update_threshold)")
    pow_of_var_regrowing: float = setting(1.0, "the regrowth score divides by the input's "
                                          "variance to this power; 0 = not at all "
                                          "(--pow_of_var_regrowing)")
    skip_layer: str = setting("mlp", "Linears left with the method's mask: `mlp` (every "
                              "non-attention Linear: the reference's default), `self_attn` (the "
                              "attention ones), `no_skip` (--skip_layer)")
    skip_sub_layer: str = setting("no_skip", "also leave the Linears of this name (the last "
                                  "part, e.g. `down_proj`); `no_skip` = none (--skip_sub_layer)")


def is_attention(name: str) -> bool:
    """A block's attention Linears live under a module whose name says so (self_attn, attn,
    self_attention, attention); the others are the MLP's (the reference's `self_attn` / `mlp`)."""
    head = name.split(".")[0]
    return "attn" in head or "attention" in head


def skipped(name: str, cfg: DsnotCfg) -> bool:
    attention = is_attention(name)
    return ((cfg.skip_layer == "mlp" and not attention)
            or (cfg.skip_layer == "self_attn" and attention)
            or name.split(".")[-1] == cfg.skip_sub_layer)


def initial_mask(score, target):
    """The mask DSnoT starts from: per row the lowest int(columns * s) scores (ties in column
    order), or the N lowest of every M."""
    if target.n_m:
        return n_m_mask(score, *target.n_m)
    return row_lowest_mask(score, target.sparsity)


def _negatives_then_positives(values):
    """Positions 0..k-1 of each row reordered: negative values first in position order, then
    positive ones from the last position back. A zero value yields position 0, in between, as
    the reference's index arithmetic does."""
    k = values.shape[1]
    positions = torch.arange(k, device=values.device).expand_as(values)
    key = torch.where(values < 0, positions, torch.where(values > 0, 3 * k - positions, k))
    order = torch.sort(key, dim=1, stable=True)[1]
    return torch.where(values.gather(1, order) == 0, torch.zeros_like(order), order)


class _Ends:
    """Per row, two cursors into a row-wise order: one walking up from its first entry, one down
    from its last. `take(side)` returns each row's entry at the chosen cursor (side 1: the top)
    and whether the cursor was still inside the order, then moves that cursor one step."""

    def __init__(self, order):
        self.order = order
        rows, width = order.shape
        self.cursor = torch.zeros(rows, 2, dtype=torch.long, device=order.device)
        self.cursor[:, 1] = width - 1
        self.step = torch.tensor([1, -1], device=order.device).expand(rows, 2)

    def take(self, side):
        at = self.cursor.gather(1, side)
        inside = (at >= 0) & (at < self.order.shape[1])
        entry = self.order.gather(1, at.clamp(0, self.order.shape[1] - 1))
        self.cursor.scatter_(1, side, at + self.step.gather(1, side))
        return entry, inside


def refine_unstructured(mask, effect, regrow_key, prune_key, cfg):
    """The unstructured cycles on `mask` (True = pruned, modified and returned). `effect`: W_ij
    E[sum_t x_jt]; `regrow_key`: the effect over the variance power (ordering regrowth);
    `prune_key`: Wanda's score (ordering the kept weights)."""
    kept_count = int((~mask[0]).sum())
    error = torch.where(mask, effect, 0.0).sum(dim=1, keepdim=True)
    regrow = _Ends(torch.sort(torch.where(mask, regrow_key, 0.0), dim=1, stable=True)[1])
    kept_order = torch.sort(prune_key.masked_fill(mask, float("inf")), dim=1,
                            stable=True)[1][:, :kept_count]
    prune = _Ends(kept_order.gather(1, _negatives_then_positives(effect.gather(1, kept_order))))
    active = torch.ones_like(error, dtype=torch.bool)
    for _ in range(cfg.max_cycle_time):
        if not active.any():
            break
        regrown, regrow_inside = regrow.take((error > 0).long())
        pruned, prune_inside = prune.take((error < 0).long())
        active &= (error.abs() > cfg.update_threshold) & regrow_inside & prune_inside
        active &= mask.gather(1, regrown) & ~mask.gather(1, pruned)  # candidates left
        _swap(mask, error, effect, regrown, pruned, active)
    return mask


def refine_n_m(mask, effect, regrow_key, score, m, cfg):
    """The N:M cycles: the regrown weight's group of `m` gives up its kept weight of lowest
    `score`; a swap must keep the sign of the row's error."""
    columns = mask.shape[1]
    error = torch.where(mask, effect, 0.0).sum(dim=1, keepdim=True)
    initial_sign = torch.sign(error)
    regrow = _Ends(torch.sort(torch.where(mask, regrow_key, 0.0), dim=1, stable=True)[1])
    # kept weights not yet given up: their score; pruned (and swapped) ones: inf
    candidates = score.masked_fill(mask, float("inf"))
    within_group = torch.arange(m, device=mask.device).reshape(1, m)
    active = torch.ones_like(error, dtype=torch.bool)
    for _ in range(cfg.max_cycle_time):
        if not active.any():
            break
        regrown, regrow_inside = regrow.take((error > 0).long())
        group = regrown - regrown % m + within_group
        in_row = group < columns  # a trailing partial group
        group_scores = candidates.gather(1, group.clamp(max=columns - 1))
        group_scores = group_scores.masked_fill(~in_row, float("inf"))
        lowest, position = torch.topk(group_scores, 1, dim=1, largest=False)
        pruned = group.gather(1, position).clamp(max=columns - 1)
        after = error + effect.gather(1, pruned) - effect.gather(1, regrown)
        active &= (initial_sign == torch.sign(after)) & (error.abs() > cfg.update_threshold)
        active &= regrow_inside & mask.gather(1, regrown) & torch.isfinite(lowest)
        candidates.scatter_(1, pruned, float("inf"))
        _swap(mask, error, effect, regrown, pruned, active)
    return mask


def _swap(mask, error, effect, regrown, pruned, active):
    """In the active rows: prune `pruned`, regrow `regrown`, and move the error by their
    effects (added, then subtracted, as the reference accumulates it)."""
    mask.scatter_(1, pruned, mask.gather(1, pruned) | active)
    mask.scatter_(1, regrown, mask.gather(1, regrown) & ~active)
    error += torch.where(active, effect.gather(1, pruned), 0.0)
    error -= torch.where(active, effect.gather(1, regrown), 0.0)


@register("dsnot", "refine")
class DSnoT(Step):
    @dataclass
    class Settings:
        dsnot: DsnotCfg = setting(factory=DsnotCfg, doc="DSnoT mask refinement")

        def check(self, weight_cfg):
            cfg = self.dsnot
            if cfg.max_cycle_time < 0 or cfg.update_threshold < 0 or cfg.pow_of_var_regrowing < 0:
                raise ConfigError("sparse.dsnot: max_cycle_time, update_threshold and "
                                  "pow_of_var_regrowing must be >= 0")
            if cfg.skip_layer not in SKIP_LAYERS:
                raise ConfigError(f"sparse.dsnot.skip_layer '{cfg.skip_layer}' must be one of "
                                  f"{', '.join(SKIP_LAYERS)}")

    needs = ("input_norms", "input_sums", "input_variances")

    @classmethod
    def check_with(cls, sparse_cfg, method_cls):
        in_effect = sparse_cfg.in_effect()
        ria = in_effect.get("ria")
        if ria is not None and ria.reallocation:
            raise ConfigError("sparse.refine: dsnot starts from the score's own column order; "
                              "remove sparse.ria.reallocation (and lsa)")
        if in_effect.get("use_variant"):
            raise ConfigError("sparse.refine: dsnot starts from a fixed count per row, not "
                              "Wanda's variant; remove sparse.use_variant")

    def refine(self, weight, score, stats, target, name):
        """The refined mask (True = prune) of `weight` starting from the lowest of `score`."""
        cfg = self.settings.dsnot
        mask = initial_mask(score, target)
        if skipped(name, cfg) or not mask.any() or mask.all():
            return mask
        effect = weight.float() * stats["input_sums"].reshape(1, -1)
        regrow_key, power = effect, cfg.pow_of_var_regrowing
        if power:  # stable inputs first
            regrow_key = effect / stats["input_variances"].reshape(1, -1) ** power
        if target.n_m:
            return refine_n_m(mask, effect, regrow_key, score.clone(), target.n_m[1], cfg)
        return refine_unstructured(mask, effect, regrow_key,
                                   wanda_score(weight, stats["input_norms"]), cfg)

    def describe(self):
        return {"name": self.NAME, **dataclasses.asdict(self.settings.dsnot)}
