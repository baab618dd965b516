"""The loss Hessian-vector products one block at a time (llmc.runner.blockwise_hessian) against
torch.autograd's double backward over the whole model: a plain hvp of the loss as a function of
the block weights, and the runner's whole-model products (llmc.runner.loss_hessian), on dense,
sliding-window, BLOOM (an autograd.Function GeLU), OPT-350m (modules around the blocks) and MoE
families."""
import pytest
import torch

from conftest import arch_adapter, tiny_model
from llmc.models import ModelHandle
from llmc.runner import Calibration
from llmc.runner.blockwise_hessian import blockwise_loss_hessian
from llmc.runner.loss_hessian import loss_hessian
from test_loss_hessian import _plain_hvp

CPU = torch.device("cpu")


def _windows(n, length):
    gen = torch.Generator().manual_seed(4)
    return [torch.randint(0, 300, (1, length), generator=gen) for _ in range(n)]


def _products(hessian, handle, windows, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with hessian(handle, windows, CPU) as (shapes, hvp):
        vectors = [torch.randint(0, 2, shape, generator=gen, dtype=torch.int8) * 2 - 1
                   for shape in shapes.values()]
        return list(shapes), vectors, hvp(vectors)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "bloom", "opt_350m", "qwen3_moe",
                                  "deepseek_v3"])
def test_blockwise_products_are_the_whole_model_double_backward(arch):
    model = tiny_model(arch, num_hidden_layers=3).double()
    handle = ModelHandle(model, arch_adapter(arch))
    windows = _windows(2, 12)
    names, vectors, blockwise = _products(blockwise_loss_hessian, handle, windows)
    whole_names, _, whole = _products(loss_hessian, handle, windows)
    assert names == whole_names == list(handle.block_weights())
    for name, got, want in zip(names, blockwise, whole):
        # the same operations in the same order (the double backward's, block by block)
        assert torch.equal(got, want), name
    if not handle.adapter.experts:  # a plain hvp over fused experts would not name the Linears
        prefix = handle.adapter.blocks
        plain = _plain_hvp(model, windows, names, [v.double() for v in vectors], prefix)
        for name, got, want in zip(names, blockwise, plain):
            assert torch.allclose(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max())), \
                name


def _unrouted(handle, window):
    """{(block index, expert path)} that the router sends no token of `window`."""
    experts = {(index, path): module for index in range(handle.num_blocks)
               for path, module in handle.experts_of(handle.block(index))}
    for module in experts.values():
        module.routed = [0] * len(module)
    with torch.no_grad():
        handle.model(input_ids=window)
    return {(index, f"{path}.{e}.") for (index, path), module in experts.items()
            for e, count in enumerate(module.routed) if count == 0}


def test_an_expert_no_token_reached_has_a_zero_product():
    model = tiny_model("mixtral", num_hidden_layers=2).double()
    handle = ModelHandle(model, arch_adapter("mixtral"))
    # three tokens, two experts each of four: the first window where some expert gets none
    windows = next([w] for w in _windows(40, 3) if _unrouted(handle, w))
    unrouted = _unrouted(handle, windows[0])
    names, _, blockwise = _products(blockwise_loss_hessian, handle, windows)
    _, _, whole = _products(loss_hessian, handle, windows)
    zero = {(index, name) for (index, name), product in zip(names, blockwise)
            if not product.any() and ".experts." in name}
    # (an expert that got only the last token has none either: no loss term reads it)
    expected = {(index, name) for index, name in names
                if any(index == i and name.startswith(p) for i, p in unrouted)}
    assert expected and expected <= zero
    assert all(torch.equal(got, want) for got, want in zip(blockwise, whole))


def test_blockwise_leaves_the_model_as_it_was():
    model = tiny_model("llama", num_hidden_layers=2)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    calibration = Calibration(ModelHandle(model, arch_adapter("llama")), _windows(2, 8), CPU)
    with calibration.loss_hessian(2, blockwise=True) as (shapes, hvp):
        hvp([torch.ones(shape, dtype=torch.int8) for shape in shapes.values()])
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == flags[name] and parameter.grad is None, name
        assert torch.equal(parameter, before[name]), name
