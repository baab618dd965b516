"""MoE models streamed (llmc/models/checkpoint_layout.py): each expert's matrices read straight
from the checkpoint, one tensor per expert under the published names (Mixtral's
block_sparse_moe.experts.<e>.w1) or fused as transformers 5 holds them, give the in-memory
run's weights and perplexities bit for bit, saved under the names transformers' own
save_pretrained gives them (the in-memory run's save)."""
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import ONE_PER_ADAPTER, arch_adapter, error_line
from streamed_runs import (as_fused, assert_same_weights, count_held_parameters,  # noqa: F401
                           run_both, stream_config)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MOE = [arch for arch in ONE_PER_ADAPTER if arch_adapter(arch).experts]


def model_dir(config_path) -> Path:
    return Path(yaml.safe_load(Path(config_path).read_text())["model"]["path"])


@pytest.mark.parametrize("layout", ["published", "fused"])
@pytest.mark.parametrize("arch", MOE)
def test_a_streamed_moe_run_equals_the_in_memory_run(cli, stream_config, arch, layout):
    directory = model_dir(stream_config(arch, "Wanda", "memory"))
    if layout == "fused":
        names = as_fused(directory)
        assert any(name.endswith("experts.gate_up_proj") for name in names)
        assert not any(".experts.0." in name for name in names)
    both = run_both(cli, stream_config, arch, "Wanda", sparse={"sparsity_out": True},
                    eval_cfg={"eval_pos": ["pretrain", "transformed"]})
    (memory, memory_weights, _), (stream, stream_weights, _) = both["memory"], both["stream"]
    assert stream["engine"]["load"] == "stream"
    assert_same_weights(memory_weights, stream_weights)
    assert memory["ppl"] == stream["ppl"] and memory["sparsity"] == stream["sparsity"]
    # saved in the layout it was read in, as transformers' save_pretrained saves a model in the
    # layout it was loaded from (assert_same_weights compared the names)
    fused = [name for name in stream_weights if name.endswith("experts.gate_up_proj")]
    assert bool(fused) == (layout == "fused")
    assert any(".experts.0." in name for name in stream_weights) == (layout == "published")


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_a_streamed_sparsegpt_moe_run_equals_the_in_memory_run(cli, stream_config, arch):
    both = run_both(cli, stream_config, arch, "SparseGPT", eval_cfg={"eval_pos": []})
    assert both["stream"][0]["engine"]["load"] == "stream"
    assert_same_weights(both["memory"][1], both["stream"][1])


def test_the_streamed_moe_save_loads_in_transformers(cli, stream_config):
    from transformers import AutoModelForCausalLM

    both = run_both(cli, stream_config, "mixtral", "Wanda", eval_cfg={"eval_pos": []})
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(4))
    logits = []
    for load in ("memory", "stream"):
        model = AutoModelForCausalLM.from_pretrained(both[load][2] / "transformed_model").eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.equal(logits[0], logits[1])


def test_a_streamed_moe_run_holds_one_block_at_a_time(cli, stream_config, monkeypatch):
    """Counted in parameters: the most materialised at once is one MoE block (its experts'
    matrices read one by one from the fused tensors), never the model."""
    held, parts = count_held_parameters(monkeypatch)
    path = stream_config("qwen3_moe", "SparseGPT", "stream",
                         eval_cfg={"eval_pos": ["transformed"], "inference_per_block": True})
    code, stderr = cli("--config", path)
    assert code == 0, stderr
    assert held["now"] == 0
    blocks = [size for part, size in parts.items() if part.startswith("block")]
    assert held["peak"] <= max(parts["pre"], max(blocks), parts["post"])
    assert held["peak"] < sum(parts.values()) // 2


@pytest.mark.parametrize("layout", ["published", "fused"])
def test_experts_that_do_not_match_config_json_are_refused(cli, stream_config, layout):
    """An expert matrix narrower than config.json says, or fewer experts in the fused tensor:
    one error naming the weight, before any work."""
    path = stream_config("qwen3_moe", "Wanda", "stream")
    directory = model_dir(path)
    if layout == "fused":
        as_fused(directory)
    tensors = load_file(directory / "model.safetensors")
    damaged = "model.layers.1.mlp.experts.gate_up_proj" if layout == "fused" else \
        "model.layers.1.mlp.experts.1.up_proj.weight"
    tensors[damaged] = tensors[damaged][:2].contiguous()
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    code, stderr = cli("--config", path)
    assert code == 2
    line = error_line(stderr)
    assert damaged in line and "config.json" in line


@pytest.mark.parametrize("layout", ["published", "fused"])
def test_a_removed_block_renumbers_the_experts_of_a_streamed_moe_model(
        tmp_path, tiny_tokenizer, layout):
    """Block 0 of three removed (llmc.models.slicing): the blocks after it read their experts
    from the same bytes under their new numbers, and the save names them so, in the layout
    read (the in-memory model's save_pretrained, same tensors)."""
    from transformers import AutoModelForCausalLM

    from conftest import arch_model, save_model_dir
    from llmc.config import ModelCfg
    from llmc.models import load_streamed
    from llmc.models.slicing import remove_blocks
    from llmc.models.weight_files import find_weight_files

    directory = save_model_dir(arch_model("mixtral", seed=1, num_hidden_layers=3),
                               tiny_tokenizer, tmp_path / "m")
    if layout == "fused":
        as_fused(directory)
    handle = load_streamed(ModelCfg(path=directory),
                           find_weight_files(Path(directory), "m").files, tmp_path / "shards")
    remove_blocks(handle, [0])
    (tmp_path / "saved").mkdir()
    handle.save_pretrained(tmp_path / "saved")
    saved = {}
    for file in (tmp_path / "saved").glob("*.safetensors"):
        saved.update(load_file(file))
    memory = AutoModelForCausalLM.from_pretrained(directory)
    del memory.model.layers[0]
    memory.config.num_hidden_layers = 2
    memory.save_pretrained(tmp_path / "memory")
    expected = load_file(tmp_path / "memory" / "model.safetensors")
    assert_same_weights(expected, saved)
    assert any("layers.1." in name and "experts" in name for name in saved)
