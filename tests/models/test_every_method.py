"""Every registered method on every supported architecture: its allocation step runs, the
runner prunes each block Linear to a uniform target and nothing else, and the pruned model
still evaluates.

The methods are read from the registry when the tests are collected, so a newly registered
method is covered without editing this file; its default SparseCfg fields are used."""
import math

import pytest
import torch

from conftest import CPU, ONE_PER_ADAPTER, arch_adapter, arch_model, token_batches
from llmc.config import SparseCfg
from llmc.eval.perplexity import perplexity
from llmc.models import ModelHandle
from llmc.config import sparse_config
from llmc.registry import METHODS, STEPS
from llmc.runner import Calibration, prune_blockwise
from llmc.sparse import UniformPlan, build_method

# every registered method that prunes weights (`none` prunes none: tests/sparse/test_none.py)
PRUNING_METHODS = sorted(name for name in METHODS if METHODS[name].PRUNES)

# One thread for speed alone (see conftest.one_torch_thread); no result depends on it.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPARSITY = 0.5
# Methods that choose a fixed count per output row (OWL prunes through its base, Wanda by
# default); any other method is held to the per-Linear count within a few entries (a threshold
# over the whole matrix, or over each column block, keeps ties and the threshold entry).
PER_ROW = {"Wanda", "OWL"}
SLACK = 4


def _setup(method_name, arch):
    model = arch_model(arch, seed=3)
    batches = token_batches(4, 16, 2)
    cfg = SparseCfg(method=method_name)
    cfg.weight.sparsity = SPARSITY
    METHODS[method_name].check_config(cfg)
    return ModelHandle(model, arch_adapter(arch)), batches, cfg


@pytest.mark.parametrize("arch", ONE_PER_ADAPTER)
@pytest.mark.parametrize("method_name", PRUNING_METHODS)
def test_method_prunes_every_block_linear_to_target_and_eval_works(method_name, arch):
    handle, batches, cfg = _setup(method_name, arch)
    model, adapter = handle.model, handle.adapter
    before = {name: p.clone() for name, p in model.named_parameters()}

    prune_blockwise(handle, METHODS[method_name](cfg), UniformPlan(cfg.weight), batches, CPU)

    pruned = set()
    for index, block in enumerate(adapter.get_blocks(model)):
        for name in handle.linear_names(index):  # each expert's own Linears (MoE)
            weight = block.get_submodule(name).weight
            pruned.add(f"{adapter.blocks}.{index}.{name}.weight")
            zeros = weight == 0
            if method_name in PER_ROW:
                assert (zeros.sum(1) == int(weight.shape[1] * SPARSITY)).all(), name
            else:
                count = int(zeros.sum())
                assert abs(count - weight.numel() * SPARSITY) <= SLACK, (name, count)
    for name, parameter in model.named_parameters():
        if name not in pruned:  # biases, norms, embeddings, lm_head
            assert torch.equal(parameter, before[name]), name

    tokens = torch.randint(0, 300, (1, 50), generator=torch.Generator().manual_seed(5))
    streamed, _ = perplexity(handle, tokens, 16, CPU, per_block=True)
    whole, _ = perplexity(handle, tokens, 16, CPU)
    assert math.isfinite(streamed) and streamed > 1
    assert streamed == pytest.approx(whole, rel=1e-5)


@pytest.mark.parametrize("arch", ONE_PER_ADAPTER)
@pytest.mark.parametrize("method_name", PRUNING_METHODS)
def test_method_allocation_runs_on_every_architecture(method_name, arch):
    """A method's allocation step (OWL measures the dense model through the runner's block
    loop) gives every block Linear a target, averaging the configured sparsity."""
    handle, batches, cfg = _setup(method_name, arch)
    method = METHODS[method_name](cfg)
    plan = method.allocate(cfg.weight, Calibration(handle, batches, CPU))
    per_block = [[plan.target(index, name).sparsity for name in handle.linear_names(index)]
                 for index in range(handle.num_blocks)]
    assert all(0 < s < 1 for block in per_block for s in block)
    # Plans are per layer (a block, whatever its count of Linears: a MoE layer has many), their
    # mean over the layers the configured sparsity.
    means = [sum(block) / len(block) for block in per_block]
    assert sum(means) / len(means) == pytest.approx(SPARSITY, abs=1e-6)


@pytest.mark.parametrize("arch", ONE_PER_ADAPTER)
@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_step_after_wanda_prunes_every_block_linear_to_target(step, arch):
    """Every registered step (refine or update) after Wanda: every block Linear at its target
    (per row, as Wanda's mask, unless the step chooses its own), nothing else changed, finite
    perplexity."""
    model = arch_model(arch, seed=3)
    handle = ModelHandle(model, arch_adapter(arch))
    kind = STEPS[step].KIND
    cfg = sparse_config(method="Wanda", weight={"sparsity": SPARSITY}, **{kind: step})
    before = {name: p.clone() for name, p in model.named_parameters()}
    prune_blockwise(handle, build_method(cfg), UniformPlan(cfg.weight), token_batches(4, 16, 2),
                    CPU)
    pruned = set()
    for index, block in enumerate(handle.adapter.get_blocks(model)):
        for name in handle.linear_names(index):
            weight = block.get_submodule(name).weight
            pruned.add(f"{handle.adapter.blocks}.{index}.{name}.weight")
            zeros = weight == 0
            assert torch.isfinite(weight).all(), name
            if STEPS[step].USES_MASK:
                assert (zeros.sum(1) == int(weight.shape[1] * SPARSITY)).all(), name
            else:
                assert abs(int(zeros.sum()) - weight.numel() * SPARSITY) <= SLACK, name
    for name, parameter in model.named_parameters():
        if name not in pruned:
            assert torch.equal(parameter, before[name]), name
    tokens = torch.randint(0, 300, (1, 50), generator=torch.Generator().manual_seed(5))
    ppl, _ = perplexity(handle, tokens, 16, CPU)
    assert math.isfinite(ppl) and ppl > 1
