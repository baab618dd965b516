"""scripts/synthetic_checkpoint.py on tiny shapes: a standard sharded checkpoint that plain
from_pretrained loads, whose tensors are the seeded values (norms ones, weights normal with the
config's std), the same bytes whatever the shard size, shards within their bound."""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import synthetic_checkpoint  # noqa: E402

SHAPES = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def _tensors(directory):
    tensors = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_a_written_checkpoint_loads_and_holds_the_seeded_values(tmp_path):
    bound = 8 * 1024
    total = synthetic_checkpoint.write_checkpoint(tmp_path / "a", LlamaConfig(**SHAPES),
                                                  max_shard_bytes=bound)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert model.dtype == torch.bfloat16
    state = model.state_dict()
    assert total == sum(t.numel() * 2 for t in state.values())
    for name, tensor in state.items():
        expected = synthetic_checkpoint.tensor_value(name, tuple(tensor.shape), torch.bfloat16,
                                                     0, 0.02)
        assert torch.equal(tensor, expected), name
    assert torch.equal(state["model.norm.weight"], torch.ones(32, dtype=torch.bfloat16))
    assert abs(state["model.layers.0.mlp.up_proj.weight"].float().std().item() - 0.02) < 0.002
    files = sorted((tmp_path / "a").glob("*.safetensors"))
    assert len(files) > 3
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in files}
    for file in files:  # a shard passes the bound only when one tensor alone does
        tensors = load_file(file)
        nbytes = sum(t.numel() * 2 for t in tensors.values())
        assert nbytes <= bound or len(tensors) == 1, file.name


def test_the_values_depend_on_the_seed_not_on_the_shards(tmp_path):
    synthetic_checkpoint.write_checkpoint(tmp_path / "a", LlamaConfig(**SHAPES))
    synthetic_checkpoint.write_checkpoint(tmp_path / "b", LlamaConfig(**SHAPES),
                                          max_shard_bytes=4096)
    synthetic_checkpoint.write_checkpoint(tmp_path / "c", LlamaConfig(**SHAPES), seed=1)
    a, b, c = (_tensors(tmp_path / name) for name in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_a_moe_checkpoint_holds_one_tensor_per_expert_matrix(tmp_path):
    """The published layout (Qwen-MoE's names), which from_pretrained fuses on loading: its
    fused tensors are the per-expert tensors stacked, gate rows before up rows."""
    from transformers import Qwen3MoeConfig

    config = Qwen3MoeConfig(**SHAPES, num_experts=4, num_experts_per_tok=2,
                            moe_intermediate_size=16, head_dim=8)
    synthetic_checkpoint.write_checkpoint(tmp_path / "moe", config, max_shard_bytes=4096)
    tensors = _tensors(tmp_path / "moe")
    assert not any("gate_up_proj" in name for name in tensors)
    assert tensors["model.layers.1.mlp.experts.3.down_proj.weight"].shape == (32, 16)
    fused = AutoModelForCausalLM.from_pretrained(tmp_path / "moe").state_dict()
    gate_up = fused["model.layers.1.mlp.experts.gate_up_proj"]
    assert gate_up.shape == (4, 32, 32)
    assert torch.equal(gate_up[2, :16], tensors["model.layers.1.mlp.experts.2.gate_proj.weight"])
    assert torch.equal(gate_up[2, 16:], tensors["model.layers.1.mlp.experts.2.up_proj.weight"])
    assert torch.equal(fused["model.layers.1.mlp.experts.down_proj"][3],
                       tensors["model.layers.1.mlp.experts.3.down_proj.weight"])
