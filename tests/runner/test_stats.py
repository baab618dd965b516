"""Statistics accumulated by hooks equal plain re-computations."""
import torch
import torch.nn as nn

from llmc.runner.stats import GroupStatistics, Hessian, InputNorms


def test_input_norms_is_mean_over_windows_of_squared_column_norms():
    torch.manual_seed(0)
    windows = [torch.randn(1, 7, 5) for _ in range(6)]
    acc = InputNorms(5, "cpu")
    for batch in (windows[0:1], windows[1:3], windows[3:6]):  # batches of 1, 2 and 3 windows
        acc.add(torch.cat(batch))
    expected = torch.stack([(w[0].double() ** 2).sum(0) for w in windows]).mean(0)
    assert acc.windows == 6
    # fp32 against float64: a 7-term norm, squared, then six rescale-and-add steps of the
    # running mean stay within ~30 roundings; 64 eps leaves room and still catches any slip.
    assert torch.allclose(acc.value.double(), expected, rtol=64 * torch.finfo(torch.float32).eps,
                          atol=0)


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
