"""Statistics gathered by forward hooks, once per input group, over all calibration windows (fp32).

A method names what it needs (`Sparsifier.needs`, checked against this table when the method is
built); each entry accumulates one batch of a Linear's input at a time, as a mean over the
windows it has seen (`value`, `windows`). A new statistic is a new class registered here.

Under torchrun each rank sees its own windows; `GroupStatistics.combine` turns the ranks' means
into the mean over all windows (llmc.distributed). One process never calls it.
"""
import math

import torch
import torch.nn as nn

from ..errors import LlmcError
from ..registry import STATISTICS


class _Accumulator:
    """`value` (float32: one per input column, or columns x columns when SQUARE) and the count
    of `windows` it has seen."""
    SQUARE = False

    def __init__(self, columns: int, device):
        shape = (columns, columns) if self.SQUARE else (columns,)
        self.value = torch.zeros(shape, dtype=torch.float32, device=device)
        self.windows = 0


def _tokens(x: torch.Tensor):
    """(windows in the batch, its tokens as rows: tokens x columns) of a Linear's input; a 2-D
    input is one window."""
    if x.dim() == 2:
        x = x.unsqueeze(0)
    return x.shape[0], x.reshape(-1, x.shape[-1])


class _RunningColumnMean(_Accumulator):
    """Per input column, the mean over windows of one quantity of a window's tokens
    (`of_tokens`, on columns x tokens), kept as the references keep it: rescale, then add, so
    values match theirs bit for bit."""

    def add(self, x: torch.Tensor) -> None:
        batch, x = _tokens(x)
        x = x.t().float()
        self.value *= self.windows / (self.windows + batch)
        self.windows += batch
        self.value += self.of_tokens(x) / self.windows


@STATISTICS.register("input_norms")
class InputNorms(_RunningColumnMean):
    """Per input column j: the mean over windows of ||X_j||^2 (norm over a window's tokens)."""

    @staticmethod
    def of_tokens(x):
        return torch.norm(x, p=2, dim=1) ** 2


@STATISTICS.register("input_sums")
class InputSums(_RunningColumnMean):
    """Per input column j: the mean over windows of sum_t X_jt (the sum over a window's tokens),
    DSnoT's expected-input term."""

    @staticmethod
    def of_tokens(x):
        return torch.sum(x, dim=1)


@STATISTICS.register("input_variances")
class InputVariances(_Accumulator):
    """Per input column j: the variance of X_j over each batch's tokens (population variance),
    averaged over batches weighted by their token counts, as DSnoT's reference pools it (with one
    window per batch, the mean of the windows' variances)."""

    def __init__(self, columns: int, device):
        super().__init__(columns, device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        batch, x = _tokens(x)
        self.windows += batch
        x = x.t().float()
        variance = torch.var(x, dim=1, unbiased=False)
        tokens = x.shape[1]
        if self.tokens == 0:
            self.value = variance
        else:
            self.value = (self.value * self.tokens + variance * tokens) / (self.tokens + tokens)
        self.tokens += tokens


@STATISTICS.register("input_moments")
class InputMoments(_Accumulator):
    """Per input column j, over every calibration token: [token count, sum X_j, sum X_j^2]
    (float64, 3 x columns), from which FLAP's mean and fluctuation come (llmc.structure.width).
    Sums, which torchrun's ranks add."""
    SUMMED = True

    def __init__(self, columns: int, device):
        super().__init__(columns, device)
        self.value = torch.zeros((3, columns), dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        batch, x = _tokens(x)
        self.windows += batch
        x = x.double()
        self.value[0] += x.shape[0]
        self.value[1] += x.sum(dim=0)
        self.value[2] += (x * x).sum(dim=0)


@STATISTICS.register("hessian")
class Hessian(_Accumulator):
    """H = (2/N) sum over the N windows of X X^T (X: a window's inputs, columns x tokens), the
    Hessian of the layer-wise squared reconstruction error. Kept as SparseGPT's running rescale
    (rescale, then add the new windows scaled by sqrt(2/N)), so values match it bit for bit."""
    SQUARE = True

    def add(self, x: torch.Tensor) -> None:
        batch, x = _tokens(x)
        x = x.t()
        self.value *= self.windows / (self.windows + batch)
        self.windows += batch
        x = math.sqrt(2 / self.windows) * x.float()
        self.value += x.matmul(x.t())


@STATISTICS.register("input_gram")
class InputGram(_Accumulator):
    """X^T X summed over every calibration token (X: tokens x columns), as the ADMM update's
    reference sums it, batch by batch: with one window per batch its values are the reference's
    bit for bit (a Hessian's 2/N running rescale would round differently, and the gradual
    update's masks amplify such differences)."""
    SQUARE = True
    SUMMED = True

    def add(self, x: torch.Tensor) -> None:
        batch, x = _tokens(x)
        self.windows += batch
        x = x.float()
        self.value += x.t().matmul(x)


def combine_means(accumulators, world) -> None:
    """The mean over every rank's windows: each rank's sum (its mean times its window count),
    summed over the ranks, divided by the total count (packed into few collectives). An
    accumulator that keeps a sum (`SUMMED`) is summed over the ranks."""
    counts = torch.tensor([float(a.windows) for a in accumulators], dtype=torch.float64,
                          device=accumulators[0].value.device)
    world.sum(counts)
    means = [a for a in accumulators if not getattr(a, "SUMMED", False)]
    for accumulator in means:
        accumulator.value *= accumulator.windows
    world.sum_all([a.value for a in accumulators])
    for accumulator, total in zip(accumulators, counts.tolist()):
        if accumulator in means:
            accumulator.value /= total
        accumulator.windows = int(total)


class GroupStatistics:
    """Hooks on the first Linear of each input group of a block; one set of accumulators per group."""

    def __init__(self, block: nn.Module, groups, needs, device):
        self.by_linear = {}
        self._handles = []
        self._block, self._needs, self._device = block, needs, device
        self._hook_groups(groups)

    def _hook_groups(self, groups):
        """Fresh accumulators for `groups`, fed by a hook on each one's first Linear."""
        for group in groups:
            first = self._block.get_submodule(group[0])
            accumulators = {need: STATISTICS[need](first.in_features, self._device)
                            for need in self._needs}
            for name in group:
                self.by_linear[name] = accumulators
            self._handles.append(first.register_forward_hook(self._hook(accumulators)))

    def regather(self, groups, feed) -> None:
        """The statistics of `groups` again, from scratch, from what `feed()` sends through
        their Linears (an expert measured on all tokens: llmc.runner.gather)."""
        self._hook_groups(groups)
        try:
            feed()
        finally:
            self._unhook()

    @staticmethod
    def _hook(accumulators):
        def gather(module, inputs, output):
            for accumulator in accumulators.values():
                accumulator.add(inputs[0].detach())

        return gather

    def _unhook(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def remove_hooks(self, check=True):
        """Stop gathering; with `check`, a group whose first Linear never saw an input is an
        error (its statistics would be silently empty, e.g. a Linear the model calls as F.linear
        slices): see `check_reached`."""
        self._unhook()
        if check:
            self.check_reached()

    def check_reached(self):
        for name, accumulators in self.by_linear.items():
            if any(acc.windows == 0 for acc in accumulators.values()):
                raise LlmcError(f"no calibration input reached {name} through its forward hook; "
                                "the model computes it without calling the Linear module, so "
                                "its adapter table must change (see docs/models.md)")

    def combine(self, world) -> None:
        """Each group's statistics over all ranks' windows (a no-op on one process)."""
        if not world.distributed:
            return
        unique = {id(acc): acc for accs in self.by_linear.values() for acc in accs.values()}
        combine_means(list(unique.values()), world)

    def release(self, names):
        """Drop the accumulators of the Linears `names` (a group that has been pruned), so a
        block's later groups are pruned without the earlier groups' Hessians in memory."""
        for name in names:
            self.by_linear.pop(name, None)

    def for_linear(self, name):
        return {need: acc.value for need, acc in self.by_linear[name].items()}
