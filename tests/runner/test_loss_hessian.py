"""The runner's loss Hessian-vector products equal a plain whole-model computation, and the
model comes back as it was."""
import pytest
import torch
from torch.func import functional_call

from conftest import tiny_model
from llmc.errors import LlmcError
from llmc.models import ModelHandle
from llmc.registry import MODELS
from llmc.runner import Calibration

CPU = torch.device("cpu")
LLAMA = MODELS["Llama"]


def _windows(n, length=12):
    gen = torch.Generator().manual_seed(4)
    return [torch.randint(0, 300, (1, length), generator=gen) for _ in range(n)]


def _plain_hvp(model, windows, names, vectors, blocks="model.layers"):
    """H v of the mean loss over `windows`, by torch.autograd.functional.hvp on a function of
    the block weights alone (the model, its blocks at `blocks`, called with those weights
    swapped in)."""
    full = [f"{blocks}.{index}.{name}.weight" for index, name in names]
    params = dict(model.named_parameters())
    start = tuple(params[name].detach().clone() for name in full)

    def loss(*weights):
        swapped = {**params, **dict(zip(full, weights))}
        losses = [functional_call(model, swapped, (ids,), {"labels": ids}).loss for ids in windows]
        return sum(losses) / len(losses)

    _, products = torch.autograd.functional.hvp(loss, start, tuple(vectors))
    return products


@pytest.mark.parametrize("n_windows", [1, 2])
def test_products_equal_a_plain_whole_model_hvp(n_windows):
    model = tiny_model("llama", num_hidden_layers=2).double()
    windows = _windows(3)
    calibration = Calibration(ModelHandle(model, LLAMA), windows, CPU)
    gen = torch.Generator().manual_seed(0)
    with calibration.loss_hessian(n_windows) as (shapes, hvp):
        names = list(shapes)
        assert names == [(i, n) for i in range(2) for n in LLAMA.linear_names()]
        vectors = [torch.randn(shapes[n], generator=gen, dtype=torch.float64) for n in names]
        first = hvp(vectors)
        again = hvp(vectors)  # the kept graph (one window) serves every product
    expected = _plain_hvp(model, windows[:n_windows], names, vectors)
    for name, got, same, want in zip(names, first, again, expected):
        # float64, but the two paths may take different attention kernels: agree to 1e-6
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max())), name
        assert torch.equal(got, same), name  # bitwise: the same product computed twice


def test_model_comes_back_unchanged_with_its_flags():
    model = tiny_model("llama", num_hidden_layers=2)
    model.model.norm.weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    calibration = Calibration(ModelHandle(model, LLAMA), _windows(2), CPU)
    with calibration.loss_hessian(1) as (shapes, hvp):
        hvp([torch.ones(shape, dtype=torch.int8) for shape in shapes.values()])
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == flags[name], name
        assert parameter.grad is None and torch.equal(parameter, before[name]), name
        assert parameter.device.type == "cpu"


def test_windows_come_from_batches_in_order():
    batches = [torch.arange(6).reshape(2, 3), torch.arange(6, 9).reshape(1, 3)]
    windows = Calibration(ModelHandle(None, LLAMA), batches, CPU).windows(3)
    assert [w.tolist() for w in windows] == [[[0, 1, 2]], [[3, 4, 5]], [[6, 7, 8]]]
    with pytest.raises(LlmcError, match="4 windows were asked for but calibration has only 3"):
        Calibration(ModelHandle(None, LLAMA), batches, CPU).windows(4)
