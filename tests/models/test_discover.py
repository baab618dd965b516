"""model.type auto: a registered model_type picks its table; any other decoder-only model gets
a discovered one, which on every tiny variant equals the hand-written table (blocks, the
modules before and after them, the input groups and dense Linears each block has)."""
import json
from pathlib import Path

import pytest

from conftest import (ARCHS, CPU, arch_adapter, arch_config, arch_model, error_line, tiny_arch,
                      token_batches)
from llmc.config import ModelCfg, SparseCfg
from llmc.errors import LlmcError
from llmc.models import load_model
from llmc.models.discover import discover
from llmc.models.experts import unfuse_experts
from llmc.models.preflight import registered_adapter
from llmc.registry import METHODS, MODELS
from llmc.runner import prune_blockwise
from llmc.sparse import UniformPlan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _present(adapter, model, paths):
    return [name for name, _ in adapter.present(model, paths)]


@pytest.mark.parametrize("arch", [a for a in ARCHS if not tiny_arch(a).remote])
def test_discovered_table_equals_the_hand_written_one(arch):
    hand = arch_adapter(arch)
    found = discover(arch_config(arch, layers=3))
    model = arch_model(arch, layers=3)
    unfuse_experts(hand.get_blocks(model), hand.experts)
    assert found.blocks == hand.blocks
    assert _present(found, model, found.pre_blocks) == _present(hand, model, hand.pre_blocks)
    assert _present(found, model, found.post_blocks) == _present(hand, model, hand.post_blocks)
    assert found.experts == hand.experts
    for block in hand.get_blocks(model):
        assert found.groups_of(block) == hand.groups_of(block)
        linears = {n for n, m in block.named_modules() if type(m).__name__ == "Linear"}
        assert set(found.dense) & linears == set(hand.dense) & linears
    assert (found.logits is None) == (hand.logits is None)
    found.check(model)


def test_a_registered_model_type_picks_the_table_made_for_it():
    assert registered_adapter("mistral") is MODELS["Mistral"]  # Llama lists it second
    assert registered_adapter("llama") is MODELS["Llama"]
    assert registered_adapter("gemma3_text") is MODELS["Gemma3"]
    assert registered_adapter("gpt_neox") is None


def test_an_unknown_model_type_is_pruned_through_its_discovered_table(tmp_path,
                                                                     tiny_tokenizer):
    """A Llama checkpoint whose config.json says another model_type (one transformers knows:
    granite) and no adapter lists: auto discovers its table, loads and prunes it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("granite", vocab_size=300, hidden_size=32,
                                  intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, num_hidden_layers=2,
                                  max_position_embeddings=256)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "granite")
    tiny_tokenizer.save_pretrained(tmp_path / "granite")
    assert registered_adapter("granite") is None
    handle = load_model(ModelCfg(type="auto", path=str(tmp_path / "granite")))
    assert handle.adapter.name == "auto:granite"
    assert handle.groups_of(0) == MODELS["Llama"].groups
    cfg = SparseCfg()
    prune_blockwise(handle, METHODS["Wanda"](cfg), UniformPlan(cfg.weight),
                    token_batches(2, 12, 1), CPU)
    down = handle.block(1).mlp.down_proj.weight
    assert ((down == 0).sum(1) == down.shape[1] // 2).all()


def test_gpt2_conv1d_projections_are_refused_by_name():
    from transformers import AutoConfig

    config = AutoConfig.for_model("gpt2", vocab_size=300, n_embd=32, n_layer=2, n_head=4,
                                  n_positions=64)
    with pytest.raises(LlmcError, match=r"model.type auto: the blocks' projections "
                                        r"\(attn.c_attn, .*\) are Conv1D modules, not Linears"):
        discover(config)


def test_the_run_records_its_table(cli, run_config):
    """results.json carries the table the run used (here Llama's, picked by model.type
    auto: the default)."""
    import yaml

    raw = yaml.safe_load(run_config.read_text())
    del raw["model"]["type"]
    run_config.write_text(yaml.safe_dump(raw))
    code, stderr = cli("--config", run_config, "--set", "eval.eval_pos=[]")
    assert code == 0, stderr
    results = json.loads((run_config.parent / "save" / "results.json").read_text())
    assert results["adapter"]["name"] == "Llama"
    assert results["adapter"]["groups"] == [list(g) for g in MODELS["Llama"].groups]


def test_a_moe_checkpoint_runs_end_to_end_through_auto(cli, run_config, tiny_model_dir):
    """Qwen2-MoE (a dense first layer, a shared expert with its gate, 4 routed experts) with
    model.type omitted: every Linear of every block and every expert slice pruned to its
    target, the gates dense, experts short of tokens reported, the saved model loads."""
    import yaml
    from transformers import AutoModelForCausalLM

    raw = yaml.safe_load(run_config.read_text())
    raw["model"] = {"path": tiny_model_dir("qwen2_moe", num_hidden_layers=2)}
    raw["calib"]["n_samples"] = 2
    raw["calib"]["min_expert_tokens"] = 40
    raw["eval"]["eval_pos"] = ["transformed"]
    run_config.write_text(yaml.safe_dump(raw))
    code, stderr = cli("--config", run_config)
    assert code == 0, stderr
    save = run_config.parent / "save"
    results = json.loads((save / "results.json").read_text())
    assert results["adapter"]["name"] == "Qwen2Moe" and results["engine"]["load"] == "memory"
    assert results["experts"]["min_expert_tokens"] == 40
    for entry in results["experts"]["under_served"]:
        assert entry["block"] == 1 and entry["tokens"] < 40
        assert entry["expert"] in {f"mlp.experts.{e}" for e in range(4)}
    per_linear = results["sparsity"]["per_linear"]
    assert {f"model.layers.1.mlp.experts.{e}.{m}" for e in range(4)
            for m in ("gate_proj", "up_proj", "down_proj")} <= set(per_linear)
    assert all(value == pytest.approx(0.5) for value in per_linear.values())
    saved = AutoModelForCausalLM.from_pretrained(save / "transformed_model")
    experts = saved.model.layers[1].mlp.experts
    for fused in (experts.gate_up_proj, experts.down_proj):
        assert ((fused == 0).sum(-1) == fused.shape[-1] // 2).all()
    gate = saved.model.layers[1].mlp.shared_expert_gate.weight
    assert bool((gate != 0).all())  # dense


def test_an_unknown_model_type_transformers_cannot_build_is_one_clear_error(cli, run_config):
    import yaml

    raw = yaml.safe_load(run_config.read_text())
    del raw["model"]["type"]
    config = json.loads((Path(raw["model"]["path"]) / "config.json").read_text())
    config["model_type"] = "zebra"
    (Path(raw["model"]["path"]) / "config.json").write_text(json.dumps(config))
    run_config.write_text(yaml.safe_dump(raw))
    code, stderr = cli("--config", run_config)
    assert code == 2
    line = error_line(stderr)
    assert "is a zebra checkpoint: no llmc table lists it" in line
    assert "supported model types: baichuan, bloom, deepseek_v3" in line


def test_auto_asks_permission_for_a_checkpoints_own_code(cli, run_config, tmp_path,
                                                         tiny_tokenizer):
    """Baichuan (its table says it ships code) under model.type auto without
    trust_remote_code: one error naming the key, before its code runs."""
    import yaml
    from conftest import save_model_dir

    path = save_model_dir(arch_model("baichuan2_7b"), tiny_tokenizer, tmp_path / "baichuan")
    raw = yaml.safe_load(run_config.read_text())
    raw["model"] = {"path": path}
    run_config.write_text(yaml.safe_dump(raw))
    code, stderr = cli("--config", run_config)
    assert code == 2
    assert "set model.trust_remote_code: True" in error_line(stderr)
