"""Per-expert statistics on a tiny MoE (Mixtral): each expert's equal a plain re-computation
from the router's own assignment, and an expert routed fewer than min_expert_tokens tokens is
measured on every token entering its layer (and reported)."""
import pytest
import torch

from conftest import CPU, arch_adapter, arch_model, token_batches
from llmc.models import ModelHandle
from llmc.runner.capture import capture_block_inputs
from llmc.runner.gather import gather_statistics
from llmc.runner.stats import Hessian, InputNorms
from llmc.errors import LlmcError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _routed_inputs(arch, batches, block_index=1):
    """Per window: the tokens entering block `block_index`'s experts and the experts the
    router picked for each, from the model's own forward (fused, transformers' code)."""
    model = arch_model(arch, layers=2)
    moe = model.model.layers[block_index].mlp
    seen = []

    def record(module, args):
        hidden, top_k_index = args[0], args[1]
        seen.append((hidden.clone(), top_k_index.clone()))

    hook = moe.experts.register_forward_pre_hook(record)
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids)
    hook.remove()
    return model, seen


def _plain(seen, expert, statistic, columns, all_tokens=False):
    accumulator = statistic(columns, "cpu")
    for hidden, top_k_index in seen:
        rows = hidden if all_tokens else hidden[(top_k_index == expert).any(-1)]
        if rows.shape[0]:
            accumulator.add(rows)
    return accumulator


def _gathered(model, arch, batches, index, **kwargs):
    handle = ModelHandle(model, arch_adapter(arch))
    inputs = capture_block_inputs(handle, batches, CPU, CPU)
    for block in range(index):  # the inputs of block `index`
        from llmc.runner.gather import run_block
        run_block(handle.block(block), block, inputs, CPU, replace=True)
    return gather_statistics(handle, index, handle.block(index), inputs,
                             ("input_norms", "hessian"), CPU, replace=False, **kwargs)


def test_each_expert_is_measured_on_the_tokens_routed_to_it():
    batches = token_batches(6, 16, 4)
    model, seen = _routed_inputs("mixtral", batches)
    statistics, _, _ = _gathered(model, "mixtral", batches, 1)
    for expert in range(4):
        stats = statistics.for_linear(f"mlp.experts.{expert}.gate_proj")
        norms = _plain(seen, expert, InputNorms, 32)
        hessian = _plain(seen, expert, Hessian, 32)
        assert 0 < norms.windows <= len(batches)
        # The same rows in the same order through the same accumulators; block 0 ran through
        # the unfused experts (llmc) or the fused ones (transformers), whose sums may round
        # differently: a few float32 roundings of the largest entry.
        torch.testing.assert_close(stats["input_norms"], norms.value, rtol=1e-5,
                                   atol=1e-5 * float(norms.value.abs().max()))
        torch.testing.assert_close(stats["hessian"], hessian.value, rtol=1e-5,
                                   atol=1e-5 * float(hessian.value.abs().max()))
    assert statistics.for_linear("mlp.experts.0.gate_proj") is not \
        statistics.for_linear("mlp.experts.1.gate_proj")


def test_an_expert_with_too_few_tokens_is_measured_on_all_of_them():
    batches = token_batches(3, 16, 4)
    model, seen = _routed_inputs("mixtral", batches)
    routed = [sum(int((k == e).any(-1).sum()) for _, k in seen) for e in range(4)]
    threshold = sorted(routed)[1] + 1  # the two least-routed experts fall short
    few = [e for e in range(4) if routed[e] < threshold]
    under_served = []
    statistics, _, _ = _gathered(model, "mixtral", batches, 1, min_expert_tokens=threshold,
                                 under_served=under_served)
    assert under_served == [{"block": 1, "expert": f"mlp.experts.{e}", "tokens": routed[e]}
                            for e in few]
    for expert in range(4):
        norms = _plain(seen, expert, InputNorms, 32, all_tokens=expert in few)
        torch.testing.assert_close(
            statistics.for_linear(f"mlp.experts.{expert}.gate_proj")["input_norms"],
            norms.value, rtol=1e-5, atol=1e-5 * float(norms.value.abs().max()))
    # down_proj reads the expert's own intermediate: on all tokens too, for a starved one
    down = statistics.for_linear(f"mlp.experts.{few[0]}.down_proj")["input_norms"]
    assert down.shape == (16,) and bool((down > 0).all())


def test_an_expert_without_tokens_and_no_fallback_is_named():
    batches = token_batches(1, 2, 4)  # 2 tokens x 2 experts each: some expert gets none
    model = arch_model("mixtral", layers=2)
    with pytest.raises(LlmcError, match=r"block 0: expert mlp.experts.\d received no "
                                        r"calibration token .* set calib.min_expert_tokens"):
        _gathered(model, "mixtral", batches, 0, min_expert_tokens=0)
