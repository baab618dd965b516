"""Every tiny architecture variant (conftest.TINY_ARCHS) under the runner: its table names every
module that runs outside the blocks, the streamed eval gives the plain forward's perplexity, and
a pruned model saved and reloaded gives identical logits. (Blockwise Wanda and SparseGPT against
a plain whole-model computation, on every variant: tests/runner/test_blockwise.py.)"""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import (ARCHS, CPU, arch_adapter, arch_model, save_model_dir, tiny_arch,
                      token_batches)
from llmc.config import ModelCfg, SparseCfg
from llmc.eval.perplexity import perplexity
from llmc.models import ModelHandle, load_model
from llmc.models.experts import fuse_experts
from llmc.registry import METHODS
from llmc.runner import prune_blockwise
from llmc.save import save_model
from llmc.sparse import UniformPlan

# One thread for speed alone (see conftest.one_torch_thread); no result depends on it.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("arch", ARCHS)
def test_table_names_every_module_that_runs_outside_the_blocks(arch):
    """On a GPU only the table's pre-/post-block modules go to the device with the blocks, so
    every module with weights or buffers that the forward runs before block 0 must be among (or
    inside) pre_blocks, and the ones after the last block must be post_blocks, in that order."""
    model = arch_model(arch)
    adapter = arch_adapter(arch)
    blocks = adapter.get_blocks(model)
    phase, ran = ["pre"], []
    handles = [blocks[0].register_forward_pre_hook(lambda *a: phase.__setitem__(0, "blocks")),
               blocks[-1].register_forward_hook(lambda *a: phase.__setitem__(0, "post"))]
    inside = {id(m) for m in blocks.modules()}
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if id(module) not in inside and own:
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: ran.append((phase[0], name))))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 300, (1, 8)))
    for handle in handles:
        handle.remove()

    def listed(name, paths):
        return any(name == path or name.startswith(path + ".") for path in paths)

    assert all(listed(name, adapter.pre_blocks) for when, name in ran if when == "pre")
    after = [model.get_submodule(name) for when, name in ran if when == "post"]
    assert after == adapter.post_block_modules(model)


def _plain_forward_ppl(model, tokens, seq_len):
    """exp of the mean next-token cross entropy over the windows, from the model's logits."""
    losses = []
    with torch.no_grad():
        for i in range(tokens.numel() // seq_len):
            ids = tokens[:, i * seq_len:(i + 1) * seq_len]
            logits = model(input_ids=ids).logits
            losses.append(F.cross_entropy(logits[0, :-1].float(), ids[0, 1:]).item())
    return math.exp(sum(losses) / len(losses))


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_eval_equals_plain_forward(arch):
    """The streamed eval runs the adapter's pre-block modules, the blocks with the captured
    arguments, then its post-block modules (OPT-350m: project_out, no final norm) in order."""
    model = arch_model(arch)
    tokens = torch.randint(0, 300, (1, 16 * 5 + 3), generator=torch.Generator().manual_seed(0))
    expected = _plain_forward_ppl(model, tokens, 16)
    handle = ModelHandle(model, arch_adapter(arch))
    streamed, _ = perplexity(handle, tokens, 16, CPU, per_block=True)
    whole, _ = perplexity(handle, tokens, 16, CPU)
    # The same kernels on the same windows as the plain forward; only the final reduction of
    # the losses differs (fp32 tensors vs Python floats), a few roundings of ~1e-7.
    assert streamed == pytest.approx(expected, rel=1e-6)
    assert whole == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_model_round_trips_and_only_block_weights_change(arch, tmp_path, tiny_tokenizer):
    remote = tiny_arch(arch).remote
    dense = arch_model(arch)
    with torch.no_grad():  # nonzero biases, so "untouched" can fail
        for name, parameter in dense.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_()
    path = save_model_dir(dense, tiny_tokenizer, tmp_path / f"{arch}_dense")
    handle = load_model(ModelCfg(type=tiny_arch(arch).adapter, path=path,
                                 trust_remote_code=remote))
    model, adapter = handle.model, handle.adapter
    before = {name: p.clone() for name, p in model.named_parameters()}
    cfg = SparseCfg()
    cfg.weight.sparsity_type = "2:4"
    prune_blockwise(handle, METHODS["Wanda"](cfg), UniformPlan(cfg.weight),
                    token_batches(4, 12, 1), CPU, min_expert_tokens=64)  # as calib's default

    pruned = {f"{adapter.blocks}.{i}.{name}.weight" for i in range(handle.num_blocks)
              for name in handle.linear_names(i)}  # each expert's own Linears (MoE)
    for name, parameter in model.named_parameters():
        if name in pruned:  # 2:4 everywhere; the kept weights are the original ones
            zeros = (parameter == 0).reshape(parameter.shape[0], -1, 4).sum(-1)
            assert (zeros == 2).all(), name
            assert torch.equal(parameter[parameter != 0], before[name][parameter != 0]), name
        else:  # biases, norms, embeddings, positions, projections, lm_head
            assert torch.equal(parameter, before[name]), name

    saved = save_model(handle, tiny_tokenizer, tmp_path / "out")  # experts fused again
    reloaded = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=remote).eval()
    ids = torch.randint(0, 300, (2, 10))
    fuse_experts(adapter.get_blocks(model), adapter.experts)  # transformers' own experts forward
    with torch.no_grad():  # bitwise: the same weights through the same kernels, in one process
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    assert sorted(reloaded.state_dict()) == sorted(dense.state_dict())
    fused = {f"{adapter.blocks}.{i}.{path}.{matrix}" for i in range(handle.num_blocks)
             for path in adapter.experts for matrix in ("gate_up_proj", "down_proj")}
    for name, parameter in reloaded.named_parameters():
        if name in pruned or name in fused:  # 2:4 along the inputs (a fused expert's last axis)
            zeros = (parameter == 0).reshape(*parameter.shape[:-1], -1, 4).sum(-1)
            assert (zeros == 2).all(), name
