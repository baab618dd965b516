"""Mask rules shared by the methods: which entries of a score matrix (rows = outputs) to zero.

Each returns a bool tensor, True = prune, and follows the reference repos' tie-breaking.
"""
import torch


def layer_threshold_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """One threshold over the whole matrix: the reference magnitude rule
    `score <= sort(score.flatten())[int(numel * sparsity)]`. (At sparsity 0 nothing is pruned;
    the reference would still drop the minimum.)"""
    count = int(score.numel() * sparsity)
    if count == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    threshold = torch.sort(score.flatten())[0][count]
    return score <= threshold


def row_lowest_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per output row, exactly floor(cols * sparsity) lowest scores, ties taken in column order:
    the same entries as the reference's stable sort, found with a k-th value instead (2-3x
    faster on CPU): everything below the k-th value, then the first tied entries up to k."""
    count = int(score.shape[1] * sparsity)
    if count == 0:
        return torch.zeros_like(score, dtype=torch.bool)
    kth = torch.kthvalue(score, count, dim=1, keepdim=True)[0]
    below = score < kth
    tied = score == kth
    room = count - below.sum(dim=1, keepdim=True)
    # Only a row with more ties at its k-th value than room needs their running count (an
    # int64 matrix: 8 bytes an entry, twice the float32 score's memory if taken whole).
    crowded = (tied.sum(dim=1, keepdim=True) > room).squeeze(1).nonzero().squeeze(1)
    mask = below | tied
    if crowded.numel():
        ties = tied[crowded]
        mask[crowded] = below[crowded] | (ties & (torch.cumsum(ties, dim=1) <= room[crowded]))
    return mask


def n_m_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every row, in each group of m consecutive columns, the n lowest scores."""
    rows, cols = score.shape
    full = cols - cols % m
    mask = torch.zeros_like(score, dtype=torch.bool)
    if full:
        groups = score[:, :full].reshape(rows, full // m, m)
        lowest = torch.topk(groups, n, dim=-1, largest=False)[1]
        mask[:, :full] = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True) \
            .reshape(rows, full)
    if full < cols:  # a trailing partial group: prune at most its size
        tail = score[:, full:]
        lowest = torch.topk(tail, min(n, tail.shape[1]), dim=-1, largest=False)[1]
        mask[:, full:] = torch.zeros_like(tail, dtype=torch.bool).scatter_(-1, lowest, True)
    return mask
