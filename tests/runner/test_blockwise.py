"""The blockwise runner's pruned model equals a plain, whole-model implementation, on every
tiny architecture variant (conftest.TINY_ARCHS, checked against the MODELS registry)."""
import copy

import pytest
import torch
import torch.nn as nn

from conftest import ARCHS, CPU, arch_adapter, arch_model, tiny_model, token_batches
from plain_pruning import plain_sparsegpt, plain_stepped, plain_wanda
from llmc.config import SparseCfg, sparse_config
from llmc.models import ModelHandle
from llmc.models.experts import unfuse_experts
from llmc.registry import METHODS, MODELS
from llmc.runner.blockwise import prune_blockwise
from llmc.runner.capture import block_output, capture_block_inputs
from llmc.sparse import UniformPlan, build_method

# One thread for speed alone (see conftest.one_torch_thread); no result depends on it.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYERS = 3
SETTINGS = {"Wanda": {}, "SparseGPT": {"blocksize": 16}}
SPARSITY = 0.5
LLAMA = MODELS["Llama"]


def _block_linears(model, adapter, index):
    block = adapter.get_blocks(model)[index]
    return [block.get_submodule(name) for name in adapter.linear_names_of(block)]


def _plain(method, model, linears, batches, cfg):
    """Prune `linears` of `model` as tests/plain_pruning.py does, from whole-model forwards."""
    if method == "Wanda":
        plain_wanda(model, linears, batches, SPARSITY, cfg.weight.n_m)
    else:
        plain_sparsegpt(model, linears, batches, cfg)


STEPPED = [{"refine": "dsnot"}, {"update": "admm"}, {"refine": "dsnot", "update": "admm"}]


@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
@pytest.mark.parametrize("steps", STEPPED, ids=lambda s: "+".join(s.values()))
@pytest.mark.parametrize("arch", ["llama", "opt", "qwen2_moe"])
def test_blockwise_steps_equal_plain(arch, steps, sparsity_type):
    """Wanda followed by DSnoT and/or ADMM: the runner's statistics per input group (the union of
    what the method and steps need) and its once-per-group ADMM system give, bit for bit, what
    each Linear's own whole-model statistics give."""
    model = arch_model(arch, layers=2)
    adapter = arch_adapter(arch)
    unfuse_experts(adapter.get_blocks(model), adapter.experts)
    batches = token_batches(4, 12, 1)
    cfg = sparse_config(method="Wanda", **steps, weight={"sparsity_type": sparsity_type},
                        **({"dsnot": {"skip_layer": "no_skip"}} if "refine" in steps else {}))
    plain, wanda = copy.deepcopy(model), copy.deepcopy(model)
    everything = [m for i in range(2) for m in _block_linears(plain, adapter, i)]
    plain_stepped(plain, everything, batches, build_method(cfg))
    prune_blockwise(ModelHandle(model, adapter), build_method(cfg), UniformPlan(cfg.weight),
                    batches, CPU)
    pruned = dict(model.named_parameters())
    for name, expected in plain.named_parameters():
        assert torch.equal(pruned[name], expected), name
    plain_wanda(wanda, [m for i in range(2) for m in _block_linears(wanda, adapter, i)],
                batches, SPARSITY, cfg.weight.n_m)  # the steps changed something
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), wanda.parameters()))


@pytest.mark.parametrize("sparsity_type", ["unstructured", "2:4"])
@pytest.mark.parametrize("sparsity_out", [False, True])
@pytest.mark.parametrize("method", ["Wanda", "SparseGPT"])
@pytest.mark.parametrize("arch", ARCHS)
def test_blockwise_equals_plain(arch, method, sparsity_out, sparsity_type):
    """Every variant of the table, both methods that gather statistics (input norms, Hessians),
    with sparsity_out off (every block's statistics from the dense model) and on (from the
    outputs of the already-pruned blocks before it), unstructured and 2:4."""
    model = arch_model(arch, layers=LAYERS)
    adapter = arch_adapter(arch)
    unfuse_experts(adapter.get_blocks(model), adapter.experts)  # MoE: the plain copies too
    batches = token_batches(4, 12, 1)
    with torch.no_grad():  # Baichuan2's NormHead normalises itself on its first forward
        model(input_ids=batches[0])
    cfg = sparse_config(method=method, sparsity_out=sparsity_out, **SETTINGS[method],
                        weight={"sparsity": SPARSITY, "sparsity_type": sparsity_type})
    n_m = cfg.weight.n_m

    dense = copy.deepcopy(model)
    plain = copy.deepcopy(model)
    if sparsity_out:  # each block sees the outputs of the already-pruned blocks before it
        for index in range(LAYERS):
            _plain(method, plain, _block_linears(plain, adapter, index), batches, cfg)
    else:  # every block's statistics come from the dense model
        everything = [m for i in range(LAYERS) for m in _block_linears(plain, adapter, i)]
        _plain(method, plain, everything, batches, cfg)

    prune_blockwise(ModelHandle(model, adapter), METHODS[method](cfg), UniformPlan(cfg.weight),
                    batches, CPU, sparsity_out=sparsity_out)
    pruned = dict(model.named_parameters())
    # bitwise: the plain reference runs the same operations in the same order (plain_pruning.py)
    for name, expected in plain.named_parameters():  # weights, biases, embeddings, heads
        assert torch.equal(pruned[name], expected), name
    block_weights = set()
    for index in range(LAYERS):
        block = adapter.get_blocks(model)[index]
        for name, linear in zip(adapter.linear_names_of(block),
                                _block_linears(model, adapter, index)):
            block_weights.add(f"{adapter.blocks}.{index}.{name}.weight")
            zeros = linear.weight == 0
            if n_m:  # N:M in every group of 4 inputs
                assert (zeros.reshape(zeros.shape[0], -1, 4).sum(-1) == 2).all(), name
            elif method == "Wanda":  # exactly half of each row
                assert (zeros.sum(1) == linear.in_features // 2).all(), name
    for name, parameter in dense.named_parameters():  # embeddings, lm_head, norms, biases
        if name not in block_weights:
            assert torch.equal(pruned[name], parameter), name


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
    first = [torch.equal(a, b) for a, b in zip(_block_linears(results[False], LLAMA, 0)[0].weight,
                                               _block_linears(results[True], LLAMA, 0)[0].weight)]
    assert all(first)
    later = _block_linears(results[False], LLAMA, 2)[-1].weight
    assert not torch.equal(later, _block_linears(results[True], LLAMA, 2)[-1].weight)


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
    args, kwargs = inputs.call(0, 0)
    assert "position_embeddings" in kwargs  # rotary cos/sin computed by the model, passed on
    assert inputs.call(1, 0) is inputs.call(0, 0)  # same-length windows share one argument set
    assert inputs.call(0, 1) is inputs.call(0, 0)  # every Llama block gets the same arguments
    expected = model.model.embed_tokens(token_batches(3, 12, 1)[2])
    assert torch.equal(inputs.hidden[2], expected)  # an embedding lookup: exact


def test_capture_gives_each_block_its_own_arguments():
    """Gemma 2 alternates sliding-window and global layers: blocks 0 and 2 get one mask, block
    1 another, each as the model hands it (stored once per kind)."""
    model = arch_model("gemma2", layers=3)
    batches = token_batches(2, 12, 1)  # longer than the sliding window (conftest.SLIDING)
    inputs = capture_block_inputs(ModelHandle(model, arch_adapter("gemma2")), batches, CPU, CPU)
    assert inputs.call(0, 2) is inputs.call(0, 0) and inputs.call(1, 0) is inputs.call(0, 0)
    sliding, full = inputs.call(0, 0)[1]["attention_mask"], inputs.call(0, 1)[1]["attention_mask"]
    assert not torch.equal(sliding, full)
    # the global mask is causal; the sliding one also hides keys 8 or more tokens back
    allowed = lambda mask: mask[0, 0] == 0  # noqa: E731  (additive masks: 0 = attend)
    assert allowed(full)[11, 0] and not allowed(sliding)[11, 0]
    assert allowed(sliding)[11, 4] and allowed(full)[11, 4]


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
