"""An N:M mask chosen in a permuted column order (RIA's channel permutation, as its reference's
`prune_ria` computes it with --reallocation and --lsa): the columns are dealt into the M
positions of the groups so that each group mixes strong and weak columns, the N lowest scores of
every group of the permuted matrix are pruned, and the mask is mapped back to the original
columns. The weights are not moved: the model computes the same function, and its mask is N:M
only in the permuted order (the order is saved beside the model, docs/methods.md).

- reallocation: columns sorted by their score totals; the k-th M-th of that order fills
  position k of every group, every other M-th reversed (a snake: weak and strong mixed);
- lsa: then, for each position c in turn, the column at position c of every group is reassigned
  by a linear sum assignment (scipy) maximising the total kept score: group g's value with
  candidate column r is the sum of its M - N largest scores, over all rows.
"""
import torch

from ..errors import ConfigError
from .masks import n_m_mask


def reallocation_order(score: torch.Tensor, m: int) -> torch.Tensor:
    """The heuristic channel reallocation: order[position] = original column."""
    columns = score.shape[1]
    ranked = torch.sort(torch.sum(score, dim=0))[1]
    order = torch.zeros_like(ranked)
    for k in range(m):
        part = ranked[columns * k // m:columns * (k + 1) // m]
        order[k::m] = part if k % 2 == 0 else part.flip(0)
    return order


def kept_value(values: torch.Tensor, n: int) -> torch.Tensor:
    """Sum over the last dim of all but the n lowest, then over the one before it."""
    lowest = torch.sort(values, dim=-1)[1][..., :n]
    pruned = torch.zeros_like(values).scatter_(-1, lowest, 1)
    return torch.sum(torch.sum(values * (pruned == 0), dim=-1), dim=-1)


def assignment_round(score: torch.Tensor, order: torch.Tensor, n: int, m: int,
                     position: int) -> torch.Tensor:
    """`order` with the columns at `position` of the groups reassigned optimally."""
    linear_sum_assignment = _scipy_assignment()
    permuted = score[:, order]
    groups = permuted.shape[1] // m
    candidates = permuted[:, position::m][:, :groups].t()  # group r's column at `position`
    others = [p for p in range(m) if p != position]
    value = torch.zeros(groups, groups, dtype=score.dtype, device=score.device)
    for group in range(groups):
        rest = permuted[:, [group * m + p for p in others]]  # rows x (m - 1)
        strips = torch.cat([candidates.unsqueeze(-1),
                            rest.unsqueeze(0).expand(groups, -1, -1)], dim=-1)
        value[group] = kept_value(strips, n)  # value[group, r]: group with candidate r
    _, chosen = linear_sum_assignment(value.cpu().numpy(), maximize=True)
    moved = torch.arange(order.numel(), device=order.device)
    slots = torch.arange(groups, device=order.device) * m + position
    moved[slots] = torch.as_tensor(chosen, device=order.device) * m + position
    return order[moved]


def permuted_n_m_mask(score: torch.Tensor, n: int, m: int, lsa: bool):
    """(mask, order): the N:M mask chosen in the permuted order, mapped back (True = prune)."""
    if score.shape[1] % m:
        raise ConfigError(f"RIA's channel reallocation needs a column count divisible by M = "
                          f"{m}; this Linear has {score.shape[1]}")
    order = reallocation_order(score, m)
    if lsa:
        for position in range(m):
            order = assignment_round(score, order, n, m, position)
    mask = torch.zeros_like(score, dtype=torch.bool)
    mask[:, order] = n_m_mask(score[:, order], n, m)
    return mask, order


def _scipy_assignment():
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise ConfigError("sparse.ria.lsa needs scipy: pip install 'llmc[ria]' (or scipy), "
                          "or set lsa: False") from None
    return linear_sum_assignment


def check_scipy() -> None:
    _scipy_assignment()
