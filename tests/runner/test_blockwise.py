"""The blockwise runner's pruned model equals a plain, whole-model implementation."""
import copy

import pytest
import torch
import torch.nn as nn

from conftest import CPU, tiny_model, token_batches
from plain_pruning import plain_wanda
from llmc.config import SparseCfg
from llmc.models import ModelHandle
from llmc.registry import METHODS, MODELS
from llmc.runner.blockwise import prune_blockwise
from llmc.runner.capture import block_output, capture_block_inputs
from llmc.sparse import UniformPlan

ADAPTERS = {"llama": "Llama", "qwen2": "Qwen2"}


def _block_linears(model, index):
    return [m for m in model.model.layers[index].modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("sparsity_out", [False, True])
@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
def test_blockwise_wanda_equals_plain(arch, sparsity_out, sparsity_type):
    model = tiny_model(arch, num_hidden_layers=3)
    batches = token_batches(5, 12, 1)
    cfg = SparseCfg(sparsity_out=sparsity_out)
    cfg.weight.sparsity, cfg.weight.sparsity_type = 0.5, sparsity_type
    n_m = cfg.weight.n_m

    plain = copy.deepcopy(model)
    if sparsity_out:  # each block sees the outputs of the already-pruned blocks before it
        for index in range(3):
            plain_wanda(plain, _block_linears(plain, index), batches, 0.5, n_m)
    else:  # every block's statistics come from the dense model
        everything = [m for i in range(3) for m in _block_linears(plain, i)]
        plain_wanda(plain, everything, batches, 0.5, n_m)

    handle = ModelHandle(model, MODELS[ADAPTERS[arch]])
    prune_blockwise(handle, METHODS["Wanda"](cfg), UniformPlan(cfg.weight), batches, CPU,
                    sparsity_out=sparsity_out)
    pruned = dict(model.named_parameters())
    # bitwise: the plain reference runs the same operations in the same order (plain_pruning.py)
    for name, expected in plain.named_parameters():
        assert torch.equal(pruned[name], expected), name
    for index in range(3):
        for linear in _block_linears(model, index):
            zeros = (linear.weight == 0)
            if n_m:
                assert (zeros.reshape(zeros.shape[0], -1, 4).sum(-1) == 2).all()
            else:
                assert (zeros.sum(1) == linear.in_features // 2).all()
    assert not (model.lm_head.weight == 0).any()
    assert not (model.model.embed_tokens.weight == 0).any()


def test_sparsity_out_changes_later_blocks_only():
    model = tiny_model("llama", num_hidden_layers=3)
    results = {}
    for flag in (False, True):
        pruned = copy.deepcopy(model)
        cfg = SparseCfg(sparsity_out=flag)
        prune_blockwise(ModelHandle(pruned, MODELS["Llama"]), METHODS["Wanda"](cfg),
                        UniformPlan(cfg.weight), token_batches(5, 12, 1), CPU,
                        sparsity_out=flag)
        results[flag] = pruned
    # bitwise: block 0 sees the same inputs and runs the same operations either way
    first = [torch.equal(a, b) for a, b in zip(_block_linears(results[False], 0)[0].weight,
                                               _block_linears(results[True], 0)[0].weight)]
    assert all(first)
    later = _block_linears(results[False], 2)[-1].weight
    assert not torch.equal(later, _block_linears(results[True], 2)[-1].weight)


def test_magnitude_needs_no_forward():
    model = tiny_model("llama")
    calls = []
    model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    cfg = SparseCfg(method="Magnitude")
    prune_blockwise(ModelHandle(model, MODELS["Llama"]), METHODS["Magnitude"](cfg),
                    UniformPlan(cfg.weight), [], CPU)
    assert not calls
    weight = model.model.layers[0].mlp.down_proj.weight
    assert abs((weight == 0).float().mean().item() - 0.5) < 0.01


def test_capture_records_every_kwarg_and_shares_equal_ones():
    model = tiny_model("llama")
    inputs = capture_block_inputs(ModelHandle(model, MODELS["Llama"]), token_batches(3, 12, 1),
                                  CPU, CPU)
    assert len(inputs) == 3
    args, kwargs = inputs.calls[0]
    assert "position_embeddings" in kwargs  # rotary cos/sin computed by the model, passed on
    assert inputs.calls[1] is inputs.calls[0]  # same-length windows share one argument set
    expected = model.model.embed_tokens(token_batches(3, 12, 1)[2])
    assert torch.equal(inputs.hidden[2], expected)  # an embedding lookup: exact


def test_block_output_accepts_tensor_or_tuple():
    tensor = torch.ones(2)
    assert block_output(tensor) is tensor
    assert block_output((tensor, None)) is tensor


def test_tuple_returning_blocks_prune_the_same():
    """Older transformers return (hidden, ...) from a decoder layer; the runner handles both."""

    class TupleLayer(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.inner = layer

        def forward(self, *args, **kwargs):
            return (self.inner(*args, **kwargs),)

    model = tiny_model("llama")
    wrapped = copy.deepcopy(model)
    adapter = MODELS["Llama"]
    import dataclasses

    wrapped_adapter = dataclasses.replace(
        adapter, groups=tuple(tuple(f"inner.{n}" for n in g) for g in adapter.groups))
    for i, layer in enumerate(wrapped.model.layers):
        wrapped.model.layers[i] = TupleLayer(layer)
    cfg = SparseCfg()
    for m, a in ((model, adapter), (wrapped, wrapped_adapter)):
        prune_blockwise(ModelHandle(m, a), METHODS["Wanda"](cfg), UniformPlan(cfg.weight),
                        token_batches(5, 12, 1), CPU)
    # bitwise: the wrapper adds no arithmetic, so both run the same operations in the same order
    for (name, p), (_, q) in zip(model.named_parameters(), wrapped.named_parameters()):
        assert torch.equal(p, q), name
