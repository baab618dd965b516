"""Baichuan: its modeling code ships with the checkpoint, so llmc runs it only when the config
says model.trust_remote_code: True, and refuses before any of it runs otherwise. The test
checkpoints carry tests/models/baichuan_remote/ as their remote code (config.json auto_map), so
transformers' real remote-code loading path is exercised from a local directory."""
import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import CPU, arch_model, save_model_dir
from llmc.cli import main
from llmc.config import ModelCfg, load_config
from llmc.errors import ConfigError, LlmcError
from llmc.models import ModelHandle, load_model, load_tokenizer
from llmc.registry import MODELS
from llmc.runner import capture_block_inputs

# One thread for speed alone (see conftest.one_torch_thread); no result depends on it.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REFUSAL = (r"not part of transformers, so llmc must be allowed to run it; set "
           r"model.trust_remote_code: True")


def _checkpoint(tmp_path, tokenizer, variant="baichuan2_7b"):
    # transformers imports a directory's remote code once per directory name and session, so a
    # name no other test uses makes "did it run?" observable
    return save_model_dir(arch_model(variant), tokenizer, tmp_path / f"{tmp_path.name}_ckpt")


def test_without_permission_nothing_of_the_checkpoint_runs(tmp_path, tiny_tokenizer, monkeypatch):
    path = _checkpoint(tmp_path, tiny_tokenizer)
    marker = tmp_path / "remote_code_ran.txt"  # the test modeling code appends to it on import
    monkeypatch.setenv("LLMC_TEST_REMOTE_CODE_MARKER", str(marker))
    modules_before = set(sys.modules)
    raw = {"model": {"type": "Baichuan", "path": path}, "sparse": {"method": "Magnitude"},
           "eval": {"eval_pos": []}, "save": {"save_path": str(tmp_path / "save")}}

    with pytest.raises(ConfigError, match=REFUSAL):
        load_config(raw=raw)
    with pytest.raises(ConfigError, match=REFUSAL):
        load_model(ModelCfg(type="Baichuan", path=path))
    with pytest.raises(ConfigError, match=REFUSAL):
        load_tokenizer(ModelCfg(type="Baichuan", path=path))
    with pytest.raises(LlmcError, match="is a baichuan checkpoint; set model.type: Baichuan"):
        load_model(ModelCfg(type="Llama", path=path))
    assert not marker.exists()
    assert not [name for name in set(sys.modules) - modules_before if "baichuan" in name]

    # The control: allowed, the same directory's code does run, and the marker shows it.
    raw["model"]["trust_remote_code"] = True
    assert load_config(raw=raw).model.trust_remote_code is True
    handle = load_model(ModelCfg(type="Baichuan", path=path, trust_remote_code=True))
    model, adapter = handle.model, handle.adapter
    ran = marker.read_text().split()
    assert {name.rsplit(".", 1)[-1] for name in ran} == {"configuration_baichuan",
                                                         "modeling_baichuan"}
    assert adapter is MODELS["Baichuan"] and type(model).__module__ in ran


@pytest.mark.parametrize("variant,head,block_kwargs", [
    ("baichuan2_7b", "NormHead", {"attention_mask", "position_ids"}),
    ("baichuan2_13b", "NormHead", {"attention_mask"}),  # the mask carries the ALiBi bias
    ("baichuan_7b", "Linear", {"attention_mask", "position_ids"}),
])
def test_one_table_covers_every_variant(variant, head, block_kwargs):
    model = arch_model(variant)
    adapter = MODELS["Baichuan"]
    adapter.check(model)  # W_pack, o_proj, gate/up, down: every block Linear, each in one group
    assert ("self_attn.W_pack",) in adapter.groups
    assert [type(m).__name__ for m in adapter.post_block_modules(model)] == ["RMSNorm", head]
    _, kwargs = capture_block_inputs(ModelHandle(model, adapter), [torch.randint(0, 300, (1, 7))],
                                     CPU, CPU).call(0, 0)
    tensors = {name for name, value in kwargs.items() if isinstance(value, torch.Tensor)}
    assert tensors == block_kwargs


def test_cli_prunes_a_baichuan2_13b_checkpoint_end_to_end(run_config, tmp_path, tiny_tokenizer,
                                                          capsys):
    path = _checkpoint(tmp_path, tiny_tokenizer, "baichuan2_13b")
    args = ["--config", str(run_config), "--set", "model.type=Baichuan", "--set",
            f"model.path={path}"]
    assert main(args) == 2
    assert "model.trust_remote_code: True" in capsys.readouterr().err

    assert main(args + ["--set", "model.trust_remote_code=True"]) == 0
    results = json.loads((tmp_path / "save" / "results.json").read_text())
    assert results["sparsity"]["overall"] == pytest.approx(0.5)
    assert len(results["sparsity"]["per_linear"]) == 2 * 5
    assert "model.layers.1.self_attn.W_pack" in results["sparsity"]["per_linear"]
    pretrain = results["ppl"]["pretrain"]["wikitext2"]
    assert 1 < pretrain != results["ppl"]["transformed"]["wikitext2"]

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "save" / "transformed_model",
                                                 trust_remote_code=True)
    w_pack = saved.model.layers[0].self_attn.W_pack.weight
    assert ((w_pack == 0).sum(1) == w_pack.shape[1] // 2).all()  # fused q|k|v, pruned per row
    # NormHead normalised its rows during the pretrain eval; the saved head is that weight
    norms = saved.lm_head.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
