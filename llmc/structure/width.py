"""Width pruning: the same number of attention heads (whole KV groups: a key-value head with its
query heads, so grouped-query attention stays consistent) and MLP intermediate channels removed
from every block, so the config says the new widths with its own keys.

Which ones, per block, follows FLAP (An et al., AAAI 2024, CASIA-IVA-Lab/FLAP) with its default
metric, WIFV: an input channel j of the Linear that reads the heads (o_proj) or the channels
(down_proj) scores its fluctuation over the calibration tokens (the sample variance of X_j)
times the squared norm of its weight column, sum_i W_ij^2. A head scores the sum of its
channels' squared scores (as FLAP's uniform UL-UM structure), a KV group the sum of its query
heads; the lowest-scoring groups and channels go. Bias compensation (FLAP's): the removed
channels' mean contribution, W[:, removed] @ mean(X)[removed], is folded into that Linear's
bias, so the block's mean output over the calibration tokens is what it was.

Deviations from FLAP's code: the variance is exact over all tokens (FLAP's running update
aliases its old and new means and skips the first batch); KV groups instead of single heads
(FLAP's LLaMA-1 has none).
"""
from dataclasses import dataclass
from typing import Dict

import torch

from ..config.typed import setting
from ..errors import LlmcError
from .base import BlockWidths, Structure, check_amount, count_of, register
from .depth import least


def input_mean_variance(moments: torch.Tensor):
    """(mean, sample variance) per input column from input_moments [count, sum, sum of
    squares] (float64)."""
    count, total, squares = moments[0], moments[1], moments[2]
    mean = total / count
    variance = (squares - total * mean) / (count - 1).clamp(min=1)
    return mean, variance.clamp(min=0)


def fluctuation_scores(weight: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """FLAP's WIFV per input column: the input's variance x the column's squared norm."""
    _, variance = input_mean_variance(moments)
    return variance * weight.double().pow(2).sum(dim=0)


def group_scores(channel_scores: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """Per KV group: the sum over its query heads of each head's squared channel scores."""
    per_head = channel_scores.pow(2).reshape(heads, -1).sum(dim=1)
    return per_head.reshape(kv_heads, heads // kv_heads).sum(dim=1)


def compensation(weight: torch.Tensor, moments: torch.Tensor, removed) -> torch.Tensor:
    """W[:, removed] @ mean(X)[removed]: what the removed inputs added on average."""
    mean, _ = input_mean_variance(moments)
    removed = torch.as_tensor(removed, dtype=torch.long, device=weight.device)
    return weight.double().index_select(1, removed) @ mean.to(weight.device)[removed]


@dataclass
class WidthCfg:
    heads: float = setting(0.25, "KV groups (a key-value head with its query heads) removed "
                           "from every block: a count (>= 1) or a fraction (< 1, rounded)")
    channels: float = setting(0.25, "MLP intermediate channels removed from every block: a "
                              "count (>= 1) or a fraction (< 1, rounded)")
    bias_compensation: bool = setting(True, "fold the removed inputs' mean contribution into "
                                      "the bias of o_proj / down_proj (FLAP), switching on the "
                                      "config's attention_bias / mlp_bias where the family's "
                                      "config has such a key (elsewhere: a warning)")


@register("Width")
class Width(Structure):
    needs = ("input_moments",)

    @dataclass
    class Settings(Structure.Settings):
        width: WidthCfg = setting(factory=WidthCfg, doc="how many heads and channels to remove")

        def check(self, weight_cfg):
            check_amount(self.width.heads, "sparse.width.heads")
            check_amount(self.width.channels, "sparse.width.channels")

    def kept(self, shape):
        """(KV groups, channels) every block keeps, and whether each output Linear gains a
        bias; an amount that leaves nothing is an error."""
        from ..models.slicing import Kept  # models imports the registries that import this

        width = self.settings.width
        if width.heads and not shape.kv_heads:
            raise LlmcError("sparse.width.heads: this model's config cannot say fewer attention "
                            "heads (its adapter's width table names no head keys, e.g. no head "
                            "dimension); set sparse.width.heads: 0")
        groups = count_of(width.heads, shape.kv_heads, "sparse.width.heads") if width.heads else 0
        channels = count_of(width.channels, shape.channels, "sparse.width.channels")
        if groups >= max(shape.kv_heads, 1) and width.heads:
            raise LlmcError(f"sparse.width.heads {width.heads} removes {groups} of "
                            f"{shape.kv_heads} KV groups; at least one must remain")
        if channels >= shape.channels:
            raise LlmcError(f"sparse.width.channels {width.channels} removes {channels} of "
                            f"{shape.channels} channels; at least one must remain")
        compensate = width.bias_compensation
        return Kept(shape.kv_heads - groups, shape.channels - channels,
                    attention_bias=compensate and groups > 0,
                    channel_bias=compensate and channels > 0)

    def measures(self, table):
        width = self.settings.width
        return tuple(name for name, amount in ((table.attention_out, width.heads),
                                               (table.channel_out, width.channels)) if amount)

    def block_widths(self, shape, kept, linears, statistics):
        chosen = BlockWidths()
        added: Dict[str, torch.Tensor] = {}
        if kept.groups != shape.kv_heads:
            out = linears[shape.attention_out].weight.data
            moments = statistics.for_linear(shape.attention_out)["input_moments"]
            scores = group_scores(fluctuation_scores(out, moments), shape.heads, shape.kv_heads)
            removed = least(scores.tolist(), shape.kv_heads - kept.groups)
            chosen.kept_groups = [g for g in range(shape.kv_heads) if g not in removed]
            chosen.removed_groups = removed
            if kept.attention_bias:
                per_group = shape.heads // shape.kv_heads * shape.head_dim
                columns = [g * per_group + c for g in removed for c in range(per_group)]
                added[shape.attention_out] = compensation(out, moments, columns)
        if kept.channels != shape.channels:
            out = linears[shape.channel_out].weight.data
            moments = statistics.for_linear(shape.channel_out)["input_moments"]
            removed = least(fluctuation_scores(out, moments).tolist(),
                            shape.channels - kept.channels)
            chosen.kept_channels = sorted(set(range(shape.channels)) - set(removed))
            chosen.removed_channels = removed
            if kept.channel_bias:
                added[shape.channel_out] = compensation(out, moments, removed)
        chosen.added_bias = added
        return chosen
