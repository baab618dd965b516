"""BLOOM: the ALiBi tensor reaches the blocks through the runner's capture, and a checkpoint's
slow_but_exact setting cannot hide Linears from the statistics hooks."""
import pytest
import torch

from conftest import CPU, arch_model, save_model_dir
from llmc.config import ModelCfg
from llmc.models import ModelHandle, load_model
from llmc.registry import MODELS
from llmc.runner import capture_block_inputs
from llmc.runner.capture import block_output

# One thread for speed alone (see conftest.one_torch_thread); no result depends on it.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLOOM = MODELS["Bloom"]


def test_captured_alibi_replays_block_0_exactly():
    model = arch_model("bloom")
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    inputs = capture_block_inputs(ModelHandle(model, BLOOM), [ids], CPU, CPU)
    args, kwargs = inputs.call(0, 0)
    assert kwargs["alibi"].shape == (2 * 4, 1, 9)  # (batch x heads, 1, keys)

    seen = []
    handle = model.transformer.h[1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(input_ids=ids)
        replayed = block_output(model.transformer.h[0](inputs.hidden[0], *args, **kwargs))
    handle.remove()
    assert torch.equal(replayed, seen[0])  # bitwise: block 0 replayed with the same arguments


def _fires(linear, model, ids):
    calls = []
    handle = linear.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    handle.remove()
    return bool(calls), logits


def test_slow_but_exact_is_turned_off_so_hooks_see_dense_4h_to_h(tiny_tokenizer, tmp_path):
    slow = arch_model("bloom", pretraining_tp=2, slow_but_exact=True)
    ids = torch.randint(0, 300, (1, 8))
    hooked, slow_logits = _fires(slow.transformer.h[0].mlp.dense_4h_to_h, slow, ids)
    assert not hooked  # sliced F.linear calls: a hook on the Linear never sees its input

    model = load_model(ModelCfg(type="Bloom", path=save_model_dir(slow, tiny_tokenizer,
                                                                  tmp_path / "bloom"))).model
    assert model.config.slow_but_exact is False
    for linear in (model.transformer.h[0].mlp.dense_4h_to_h,
                   model.transformer.h[0].self_attention.dense):
        hooked, logits = _fires(linear, model, ids)
        assert hooked
        torch.testing.assert_close(logits, slow_logits)  # the same product, summed at once
