"""Width: FLAP's fluctuation score and bias compensation on hand-made examples, KV groups
removed whole (grouped-query attention stays consistent), and the one-line refusals of what a
family's config cannot say."""
import copy

import pytest
import torch

from llmc.config.schema import SparseCfg
from llmc.config.typed import build
from llmc.errors import LlmcError
from llmc.models.handle import ModelHandle
from llmc.runner.restructure import restructure_blockwise
from llmc.runner.stats import InputMoments
from llmc.structure import build_structure
from llmc.structure.width import (compensation, fluctuation_scores, group_scores,
                                  input_mean_variance)

from conftest import CPU, arch_adapter, arch_model, token_batches


def _moments(x):
    moments = InputMoments(x.shape[-1], CPU)
    moments.add(x)
    return moments.value


def test_moments_give_the_mean_and_sample_variance():
    x = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])
    mean, variance = input_mean_variance(_moments(x))
    assert mean.tolist() == [3.0, 2.0]
    assert variance.tolist() == [4.0, 0.0]  # ((1-3)^2 + 0 + (5-3)^2) / (3 - 1)


def test_fluctuation_score_is_variance_times_the_column_norm():
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 2.0, 2.0], [5.0, 2.0, 4.0]])  # variances 4, 0, 4
    weight = torch.tensor([[1.0, 5.0, 0.5], [1.0, 5.0, 0.5]])  # squared norms 2, 50, 0.5
    assert fluctuation_scores(weight, _moments(x)).tolist() == [8.0, 0.0, 2.0]


def test_group_scores_sum_squared_channel_scores_per_kv_group():
    # 4 query heads of 2 channels, 2 KV groups (2 query heads each)
    scores = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.0, 0.0, 3.0, 1.0], dtype=torch.float64)
    assert group_scores(scores, heads=4, kv_heads=2).tolist() == [6.0, 10.0]


def test_bias_compensation_keeps_the_mean_output_and_lowers_the_error():
    """A toy layer: the compensated layer's mean output over the calibration inputs is the
    full layer's, and its squared error to the full layer is below the uncompensated one's."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen) + torch.linspace(-2, 3, 8)  # inputs with non-zero means
    weight = torch.randn(5, 8, generator=gen)
    removed, kept = [1, 4, 6], [0, 2, 3, 5, 7]
    full = x @ weight.t()
    bias = compensation(weight, _moments(x), removed).float()
    plain = x[:, kept] @ weight[:, kept].t()
    compensated = plain + bias
    torch.testing.assert_close(compensated.mean(dim=0), full.mean(dim=0), rtol=0, atol=1e-4)
    assert ((compensated - full) ** 2).mean() < ((plain - full) ** 2).mean()


def _width(**width):
    raw = {"structure": "Width", "method": "none", "weight": {"sparsity": 0}, "width": width}
    return build_structure(build(SparseCfg, raw, "sparse"))


def test_kv_groups_go_whole_with_their_query_heads():
    """A tiny Llama with 4 query heads over 2 KV heads (head_dim 8): removing one KV group
    keeps the other's key/value rows and its 2 query heads' rows, and o_proj's matching
    columns, as they were; the config says 2 query heads over 1 KV head."""
    model = arch_model("llama", layers=2)
    dense = copy.deepcopy(model)
    handle = ModelHandle(model, arch_adapter("llama"))
    done = restructure_blockwise(handle, _width(heads=1, channels=0, bias_compensation=False),
                                 token_batches(3, 16, seed=1), CPU)
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1
    assert model.config.head_dim == 8
    for index, block in enumerate(model.model.layers):
        (kept,) = done["widths"][index].kept_groups
        q_rows = torch.arange(kept * 16, kept * 16 + 16)  # query heads 2g, 2g+1
        kv_rows = torch.arange(kept * 8, kept * 8 + 8)
        old = dense.model.layers[index].self_attn
        attention = block.self_attn
        assert torch.equal(attention.q_proj.weight, old.q_proj.weight[q_rows])
        assert torch.equal(attention.k_proj.weight, old.k_proj.weight[kv_rows])
        assert torch.equal(attention.v_proj.weight, old.v_proj.weight[kv_rows])
        assert torch.equal(attention.o_proj.weight, old.o_proj.weight[:, q_rows])
        assert torch.equal(block.mlp.down_proj.weight,
                           dense.model.layers[index].mlp.down_proj.weight)


def test_the_lowest_scoring_channels_go():
    """The channels removed from a block are those of least fluctuation score, computed here
    from the down_proj inputs of the dense block."""
    model = arch_model("llama", layers=2)
    batches = token_batches(3, 16, seed=1)
    inputs = []
    hook = model.model.layers[1].mlp.down_proj.register_forward_hook(
        lambda module, args, out: inputs.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for ids in batches:
            model(ids)
    hook.remove()
    x = torch.cat(inputs).double()
    weight = model.model.layers[1].mlp.down_proj.weight.double()
    plain = x.var(dim=0) * weight.pow(2).sum(dim=0)
    done = restructure_blockwise(ModelHandle(model, arch_adapter("llama")),
                                 _width(heads=0, channels=16, bias_compensation=False),
                                 batches, CPU)
    assert done["widths"][1].removed_channels == sorted(plain.argsort()[:16].tolist())
    assert model.config.intermediate_size == 48


@pytest.mark.parametrize("arch, width, message", [
    ("opt", {"heads": 1, "channels": 0}, "cannot say fewer attention heads"),
    ("bloom", {"heads": 1, "channels": 8}, "Bloom has not"),
    ("mixtral", {"heads": 0, "channels": 8}, "Mixtral has not"),
    ("llama", {"heads": 2, "channels": 0}, "at least one must remain"),
    ("llama", {"heads": 0, "channels": 64}, "at least one must remain"),
])
def test_what_a_config_cannot_say_is_refused_before_the_pass(arch, width, message):
    model = arch_model(arch, layers=2)
    dense = copy.deepcopy(model.state_dict())
    handle = ModelHandle(model, arch_adapter(arch))
    with pytest.raises(LlmcError, match=message):
        restructure_blockwise(handle, _width(**width), token_batches(2, 16, seed=1), CPU)
    handle.release()  # experts fused again
    after = model.state_dict()
    assert after.keys() == dense.keys()
    assert all(torch.equal(dense[k], v) for k, v in after.items())


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_slicing_a_block_equals_zeroing_what_reads_the_removed_parts(arch):
    """Removing a KV group (with its query heads) and MLP channels from a block computes what
    the dense block computes with o_proj's columns of those heads and down_proj's columns of
    those channels zeroed: the rows kept in q, k, v and gate, up are the ones the kept heads
    and channels use, also where they are stacked in one Linear (Phi-3's qkv_proj and
    gate_up_proj)."""
    from llmc.models.slicing import block_shape, head_rows, slice_block
    from llmc.structure import BlockWidths

    model = arch_model(arch, layers=1)
    handle = ModelHandle(model, arch_adapter(arch))
    table, shape = handle.adapter.widths, block_shape(handle)
    removed_group, removed_channels = 0, [3, 17, 40]
    zeroed = copy.deepcopy(model)
    queries, _ = head_rows([removed_group], shape)
    with torch.no_grad():
        zeroed.get_submodule(f"model.layers.0.{table.attention_out}").weight[:, queries] = 0
        zeroed.get_submodule(f"model.layers.0.{table.channel_out}").weight[
            :, removed_channels] = 0
    slice_block(handle.block(0), table, shape, BlockWidths(
        kept_groups=[g for g in range(shape.kv_heads) if g != removed_group],
        kept_channels=[c for c in range(shape.channels) if c not in removed_channels]))
    model.config.num_attention_heads -= shape.heads // shape.kv_heads
    model.config.num_key_value_heads -= 1
    model.config.head_dim = shape.head_dim
    model.config.intermediate_size -= len(removed_channels)
    ids = token_batches(1, 12, seed=3)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, zeroed(ids).logits, rtol=1e-5, atol=1e-5)
