"""ModelHandle: what it reads off the model and adapter, and that its context managers move
exactly the adapter's parts to the device and back, in order, also when the body fails."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from conftest import arch_model, tiny_model
from llmc.errors import LlmcError
from llmc.models import ModelHandle
from llmc.registry import MODELS


def _handle(arch="llama", type_name="Llama"):
    return ModelHandle(arch_model(arch), MODELS[type_name])


def test_reads_the_model_through_the_adapter():
    handle = _handle()
    model, adapter = handle.model, handle.adapter
    assert handle.dtype == torch.float32
    assert handle.hidden_size == 32
    assert handle.num_blocks == 2
    assert handle.block(1) is model.model.layers[1]
    assert handle.block_path(1) == "model.layers.1"
    assert handle.groups_of(1) == adapter.groups  # a dense model: every block the table's
    assert handle.linear_names(1) == adapter.linear_names()
    linears = handle.block_linears(1)
    assert list(linears) == adapter.linear_names()
    assert linears["mlp.down_proj"] is model.model.layers[1].mlp.down_proj
    assert all(isinstance(linear, nn.Linear) for linear in linears.values())


def test_block_weights_are_every_block_linear_in_block_order():
    handle = _handle("opt", "OPT")
    weights = handle.block_weights()
    assert list(weights) == [(i, n) for i in range(2) for n in handle.linear_names(i)]
    assert weights[(1, "fc2")] is handle.model.model.decoder.layers[1].fc2.weight


def test_check_uses_the_handles_adapter():
    model = tiny_model("llama")
    ModelHandle(model, MODELS["Llama"]).check()
    partial = dataclasses.replace(MODELS["Llama"], groups=MODELS["Llama"].groups[:-1])
    with pytest.raises(LlmcError, match="mlp.down_proj"):
        ModelHandle(model, partial).check()


@pytest.fixture
def moves(monkeypatch):
    """Every Module.to call as (module, device), in order."""
    calls = []
    original = nn.Module.to

    def recording_to(module, *args, **kwargs):
        calls.append((module, str(args[0] if args else kwargs.get("device"))))
        return original(module, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", recording_to)
    return calls


def test_each_context_moves_its_parts_there_and_back_in_order(moves):
    handle = _handle()
    model = handle.model
    with handle.block_on(1, "cpu") as block:
        assert block is model.model.layers[1]
    with handle.pre_blocks_on("cpu") as pre:
        assert pre == [model.model.embed_tokens, model.model.rotary_emb]
    with handle.post_blocks_on("cpu") as post:
        assert post == [model.model.norm, model.lm_head]
    with handle.whole_on("cpu") as whole:
        assert whole is model
    layer = model.model.layers[1]
    assert moves == [(layer, "cpu"), (layer, "cpu"),
                     *[(m, "cpu") for m in pre], *[(m, "cpu") for m in pre],
                     *[(m, "cpu") for m in post], *[(m, "cpu") for m in post],
                     (model, "cpu"), (model, "cpu")]


def test_a_failing_body_still_moves_the_part_back(moves):
    handle = _handle()
    with pytest.raises(RuntimeError, match="inside"):
        with handle.block_on(0, torch.device("cpu")):
            assert len(moves) == 1
            raise RuntimeError("inside")
    assert moves == [(handle.block(0), "cpu"), (handle.block(0), "cpu")]


def test_variant_adapters_make_variant_handles():
    adapter = MODELS["Llama"]
    singletons = dataclasses.replace(adapter, groups=tuple((n,) for n in adapter.linear_names()))
    handle = ModelHandle(tiny_model("llama"), singletons)
    assert handle.groups_of(0) == tuple((n,) for n in adapter.linear_names())
    assert handle.linear_names(0) == adapter.linear_names()


def test_the_finite_check_sees_every_chunk():
    from llmc.models.handle import all_finite

    tensor = torch.zeros(3, 7)
    assert bool(all_finite(tensor, chunk=4))
    for position in (0, 11, 20):  # first chunk, middle, the short last chunk
        bad = tensor.clone()
        bad.view(-1)[position] = float("nan")
        assert not bool(all_finite(bad, chunk=4)) and not bool(all_finite(bad))
    tensor.view(-1)[20] = float("inf")
    assert not bool(all_finite(tensor, chunk=4))
