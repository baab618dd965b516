"""Statistics accumulated by hooks equal plain re-computations."""
import torch
import torch.nn as nn

from llmc.runner.stats import (GroupStatistics, Hessian, InputGram, InputNorms, InputSums,
                               InputVariances, combine_means)


def fed_in_batches_of_1_2_3(statistic, seed):
    """(six windows of 7 tokens x 5 columns, `statistic` fed them in batches of 1, 2 and 3)."""
    torch.manual_seed(seed)
    windows = [torch.randn(1, 7, 5) for _ in range(6)]
    acc = statistic(5, "cpu")
    for batch in (windows[0:1], windows[1:3], windows[3:6]):
        acc.add(torch.cat(batch))
    return windows, acc


def test_input_norms_is_mean_over_windows_of_squared_column_norms():
    windows, acc = fed_in_batches_of_1_2_3(InputNorms, seed=0)
    expected = torch.stack([(w[0].double() ** 2).sum(0) for w in windows]).mean(0)
    assert acc.windows == 6
    # fp32 against float64: a 7-term norm, squared, then six rescale-and-add steps of the
    # running mean stay within ~30 roundings; 64 eps leaves room and still catches any slip.
    assert torch.allclose(acc.value.double(), expected, rtol=64 * torch.finfo(torch.float32).eps,
                          atol=0)


def test_input_sums_is_mean_over_windows_of_column_sums():
    windows, acc = fed_in_batches_of_1_2_3(InputSums, seed=2)
    expected = torch.stack([w[0].double().sum(0) for w in windows]).mean(0)
    assert acc.windows == 6
    # sums of 7 terms of either sign: the bound scales with the sum of magnitudes
    bound = 64 * torch.finfo(torch.float32).eps * torch.stack(
        [w[0].double().abs().sum(0) for w in windows]).mean(0)
    assert ((acc.value.double() - expected).abs() <= bound).all()


def test_input_variances_pool_each_batchs_token_variance_by_token_count():
    """One window per batch (the reference's calls): the mean of the windows' population
    variances; a batch of several windows is one population of all its tokens."""
    torch.manual_seed(3)
    windows = [torch.randn(1, 8, 5) * (i + 1) + i for i in range(4)]
    acc = InputVariances(5, "cpu")
    for window in windows:
        acc.add(window)
    expected = torch.stack([w[0].double().var(0, unbiased=False) for w in windows]).mean(0)
    assert acc.windows == 4
    assert torch.allclose(acc.value.double(), expected, rtol=1e-6, atol=0)
    pooled = InputVariances(5, "cpu")
    pooled.add(torch.cat(windows[:2]))
    pooled.add(torch.cat(windows[2:]))
    halves = [torch.cat([w[0] for w in part]).double().var(0, unbiased=False)
              for part in (windows[:2], windows[2:])]
    assert torch.allclose(pooled.value.double(), (halves[0] + halves[1]) / 2, rtol=1e-6, atol=0)


def test_input_gram_is_x_transpose_x_summed_over_every_token():
    torch.manual_seed(4)
    windows = [torch.randn(1, 9, 6) for _ in range(5)]
    acc = InputGram(6, "cpu")
    for batch in (windows[0:2], windows[2:3], windows[3:5]):
        acc.add(torch.cat(batch))
    x = torch.cat([w[0].double() for w in windows])
    bound = 45 * torch.finfo(torch.float32).eps * (x.abs().t() @ x.abs())
    assert acc.windows == 5
    assert ((acc.value.double() - x.t() @ x).abs() <= bound).all()


def test_ranks_combine_means_as_means_and_sums_as_sums():
    class Sum:  # a two-rank world on one process: each "rank" holds the same values
        def sum(self, t):
            t *= 2

        def sum_all(self, tensors):
            for t in tensors:
                t *= 2

    norms, gram = InputNorms(2, "cpu"), InputGram(2, "cpu")
    for acc in (norms, gram):
        acc.add(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    before = norms.value.clone(), gram.value.clone()
    combine_means([norms, gram], Sum())
    assert torch.equal(norms.value, before[0]) and torch.equal(gram.value, 2 * before[1])
    assert norms.windows == gram.windows == 2


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 3)
        self.c = nn.Linear(3, 2)

    def forward(self, x):
        return self.c(self.a(x) + self.b(x))


def test_one_accumulator_per_input_group():
    block = _Block()
    stats = GroupStatistics(block, (("a", "b"), ("c",)), ("input_norms",), "cpu")
    x = torch.randn(1, 5, 4)
    block(x)
    stats.remove_hooks()
    assert stats.for_linear("a")["input_norms"] is stats.for_linear("b")["input_norms"]
    assert torch.allclose(stats.for_linear("a")["input_norms"], (x[0] ** 2).sum(0))
    hidden = block.a(x) + block.b(x)
    assert torch.allclose(stats.for_linear("c")["input_norms"], (hidden[0] ** 2).sum(0), atol=1e-6)
    block(x)  # hooks removed: nothing more is gathered
    assert torch.allclose(stats.for_linear("a")["input_norms"], (x[0] ** 2).sum(0))


def test_hessian_is_two_over_n_sum_of_x_xt_over_all_windows():
    torch.manual_seed(1)
    windows = [torch.randn(1, 9, 6) for _ in range(5)]
    acc = Hessian(6, "cpu")
    for batch in (windows[0:2], windows[2:3], windows[3:5]):  # batches of 2, 1 and 2 windows
        acc.add(torch.cat(batch))
    x = torch.cat([w[0].double() for w in windows])  # all tokens x columns
    expected = 2 / len(windows) * x.t() @ x
    assert acc.windows == 5
    # Each entry is an fp32 sum of 45 products (accumulated in a different order from the
    # float64 reference): the standard bound for such a sum is n * eps * sum |products|.
    bound = 45 * torch.finfo(torch.float32).eps * (2 / len(windows) * x.abs().t() @ x.abs())
    assert ((acc.value.double() - expected).abs() <= bound).all()
    # X X^T is symmetric in exact arithmetic, but a BLAS kernel may sum the two triangles in
    # different orders (it does on some AMD CPUs), so symmetry holds to the same bound only.
    assert ((acc.value - acc.value.t()).double().abs() <= bound).all()


def test_a_group_that_never_sees_an_input_is_an_error():
    import pytest

    from llmc.errors import LlmcError

    block = _Block()
    stats = GroupStatistics(block, (("a", "b"), ("c",)), ("input_norms",), "cpu")
    block.a(torch.randn(1, 5, 4))  # c is never called
    with pytest.raises(LlmcError, match="no calibration input reached c"):
        stats.remove_hooks()
