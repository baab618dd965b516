"""Adapters and loading: the table covers every Linear, mismatches name the right model.type."""
import dataclasses

import pytest
import torch

from conftest import CPU, tiny_model
from llmc.config import ModelCfg
from llmc.errors import LlmcError
from llmc.models import ModelHandle, load_model
from llmc.registry import MODELS


@pytest.mark.parametrize("arch,adapter", [("llama", "Llama"), ("qwen2", "Qwen2")])
def test_load_returns_cpu_eval_model_with_its_adapter(tiny_model_dir, arch, adapter):
    handle = load_model(ModelCfg(type=adapter, path=tiny_model_dir(arch)))
    model, found = handle.model, handle.adapter
    assert isinstance(handle, ModelHandle) and found is MODELS[adapter]
    assert not model.training and model.device.type == "cpu"
    assert len(found.get_blocks(model)) == 2
    assert [type(m).__name__ for m in found.post_block_modules(model)][-1] == "Linear"


def test_wrong_model_type_names_the_right_one(tiny_model_dir):
    with pytest.raises(LlmcError, match="qwen2 checkpoint; set model.type: Qwen2"):
        load_model(ModelCfg(type="Llama", path=tiny_model_dir("qwen2")))


def test_not_a_model_directory(tmp_path):
    with pytest.raises(LlmcError, match="not a loadable Hugging Face model directory"):
        load_model(ModelCfg(type="Llama", path=str(tmp_path)))


def test_adapter_check_refuses_a_linear_it_does_not_list():
    model = tiny_model("llama")
    partial = dataclasses.replace(MODELS["Llama"], groups=MODELS["Llama"].groups[:-1])
    with pytest.raises(LlmcError, match="mlp.down_proj"):
        partial.check(model)
    MODELS["Llama"].check(model)


def test_qwen2_biases_survive_pruning_untouched():
    from llmc.config import SparseCfg
    from llmc.registry import METHODS
    from llmc.runner import prune_blockwise
    from llmc.sparse import UniformPlan

    model = tiny_model("qwen2")
    torch.nn.init.normal_(model.model.layers[0].self_attn.q_proj.bias)
    bias = model.model.layers[0].self_attn.q_proj.bias.clone()
    cfg = SparseCfg()
    prune_blockwise(ModelHandle(model, MODELS["Qwen2"]), METHODS["Wanda"](cfg),
                    UniformPlan(cfg.weight), [torch.randint(0, 300, (1, 8))], CPU)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.bias, bias)
