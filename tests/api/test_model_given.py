"""A model object given to llmc.prune: checked before any work (meta weights, hooks, several
devices, not a model, another family than model.type), and every family's model handed back in
transformers' own layout (MoE experts fused again), loadable as it was."""
import pytest
import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM

import llmc
from conftest import ONE_PER_ADAPTER, TINY_ARCHS, arch_config, token_batches, tiny_model
from llmc.errors import LlmcError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = {"sparse": {"method": "Wanda"}, "calib": {"seq_len": 16}}
IDS = torch.cat(token_batches(2, 16, 1))


def test_a_model_on_the_meta_device_is_refused():
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(arch_config("llama"))
    with pytest.raises(LlmcError, match="on the meta device .*give llmc.prune the checkpoint"):
        llmc.prune(model, None, CONFIG, calibration=IDS)


def test_a_model_with_hooks_is_refused_and_left_as_it_was():
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    handle = model.model.layers[1].mlp.register_forward_hook(lambda *args: None)
    with pytest.raises(LlmcError, match="hooks attached \\(forward hooks on 'model.layers.1.mlp'"):
        llmc.prune(model, None, CONFIG, calibration=IDS)
    handle.remove()
    model.model._hf_hook = object()  # accelerate's dispatch (device_map) leaves one like this
    with pytest.raises(LlmcError, match="an accelerate hook on 'model'.*device_map"):
        llmc.prune(model, None, CONFIG, calibration=IDS)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in before.items())


@pytest.mark.parametrize("given, message", [
    ("not a model".encode(), "takes a transformers model object"),
    (torch.nn.Linear(2, 2), "takes a transformers model object"),
])
def test_what_is_not_a_model_is_refused(given, message):
    with pytest.raises(LlmcError, match=message):
        llmc.prune(given, None, CONFIG, calibration=IDS)


def test_model_type_of_another_family_is_named():
    with pytest.raises(LlmcError, match="model.type is OPT but the model is a llama; set "
                                        "model.type: Llama"):
        llmc.prune(tiny_model("llama"), None, {**CONFIG, "model": {"type": "OPT"}},
                   calibration=IDS)


def test_streaming_is_refused_for_a_model_in_memory():
    with pytest.raises(LlmcError, match="model.load: stream .*use llmc.run"):
        llmc.prune(tiny_model("llama"), None, {**CONFIG, "model": {"load": "stream"}},
                   calibration=IDS)


@pytest.mark.parametrize("arch", sorted(set(ONE_PER_ADAPTER) | {"mixtral", "qwen2_moe"}))
def test_every_family_is_pruned_and_handed_back_in_its_own_layout(arch, tmp_path):
    model = tiny_model(arch, seed=1)
    layout = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    result = llmc.prune(model, None, CONFIG, calibration=IDS)
    assert {n: tuple(p.shape) for n, p in model.state_dict().items()} == layout
    assert result.sparsity["overall"] == pytest.approx(0.5, abs=0.02)
    if TINY_ARCHS[arch].remote:
        return  # its code is not importable by name: the layout check above is the round trip
    model.save_pretrained(tmp_path)  # transformers' own layout: it loads as it was saved
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_on_a_gpu_is_pruned_there_and_stays_there():
    model = tiny_model("llama").to("cuda", torch.bfloat16)
    result = llmc.prune(model, None, CONFIG, calibration=IDS)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert model.dtype == torch.bfloat16 and result.record["run"]["device"].startswith("cuda")
