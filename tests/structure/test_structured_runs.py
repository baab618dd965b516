"""Structured runs end to end: the saved smaller model is a standard checkpoint of its family
(plain from_pretrained) whose logits are the pruned model's, on every family whose config can
say the change; removing nothing is the identity; a structured method composes with an
unstructured one; what a run cannot do is one error line before any work."""
import copy
import csv
import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import llmc
from conftest import TINY_ARCHS, arch_model, error_line, token_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Baichuan's modeling code is the checkpoint's own (the test stand-in is not saved with a model
# object); every other family is built by transformers from the saved config.
DEPTH_ARCHS = [arch for arch, row in TINY_ARCHS.items() if not row.remote]
# Width: the families whose adapter says their widths, with the Linears bias compensation can
# fold into: those their config can give a bias (Llama: attention_bias and mlp_bias; Qwen3 and
# Gemma: attention_bias; OPT: its Linears have biases; Mistral, Qwen2 and Phi-3: none).
ATTENTION, MLP = "self_attn.o_proj", "mlp.down_proj"
WIDTH_ARCHS = {"llama": [MLP, ATTENTION], "opt": ["fc2"], "mistral": [], "mistral_sliding": [],
               "qwen2": [], "qwen3": [ATTENTION], "gemma2": [ATTENTION],
               "gemma3": [ATTENTION], "phi3": []}
HEADS = {"opt": 0}  # OPT's config has no head dimension: its heads cannot be fewer


def _config(sparse, save_path=None):
    config = {"base": {"device": "cpu", "seed": 0}, "model": {"type": "auto"},
              "calib": {"n_samples": 3, "seq_len": 16},
              "sparse": {"method": "none", "weight": {"sparsity": 0}, **sparse}}
    if save_path is not None:
        config["save"] = {"save_trans": True, "save_path": str(save_path)}
    return config


def _saved_equals_pruned(arch, sparse, tmp_path, tiny_tokenizer, layers=4):
    model = arch_model(arch, layers=layers)
    result = llmc.prune(model, tiny_tokenizer, _config(sparse, tmp_path / "save"),
                        calibration=torch.cat(token_batches(3, 16, seed=1)))
    saved = Path(result.saved_model)
    again = AutoModelForCausalLM.from_pretrained(saved, attn_implementation="eager").eval()
    assert again.config.num_hidden_layers == model.config.num_hidden_layers
    assert again.state_dict().keys() == model.state_dict().keys()
    ids = token_batches(1, 24, seed=7)[0]
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    return result, model


@pytest.mark.parametrize("arch", DEPTH_ARCHS)
@pytest.mark.parametrize("method", ["ShortGPT", "Contiguous"])
def test_depth_saves_a_smaller_model_with_the_pruned_logits(arch, method, tmp_path,
                                                            tiny_tokenizer):
    result, model = _saved_equals_pruned(arch, {"structure": method, "depth": {"remove": 2}},
                                         tmp_path, tiny_tokenizer)
    structure = result.record["structure"]
    assert structure["blocks"] == {"before": 4, "after": 2}
    assert len(structure["blocks_removed"]) == 2
    assert structure["parameters"]["after"] < structure["parameters"]["before"]
    assert structure["checkpoint_bytes"]["after"] is not None
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types is not None:  # sliding-window layers (Gemma, Qwen3): the kept blocks' types
        dense_types = arch_model(arch, layers=4).config.layer_types
        kept = [i for i in range(4) if i not in structure["blocks_removed"]]
        assert layer_types == [dense_types[i] for i in kept]


@pytest.mark.parametrize("compensation", [True, False])
@pytest.mark.parametrize("arch", sorted(WIDTH_ARCHS))
def test_width_saves_a_smaller_model_with_the_pruned_logits(arch, compensation, tmp_path,
                                                            tiny_tokenizer):
    sparse = {"structure": "Width", "width": {"heads": HEADS.get(arch, 1), "channels": 16,
                                              "bias_compensation": compensation}}
    result, model = _saved_equals_pruned(arch, sparse, tmp_path, tiny_tokenizer, layers=2)
    widths = result.record["structure"]["widths"]
    assert [len(w["removed_channels"]) for w in widths] == [16, 16]
    assert all(len(w["removed_kv_groups"]) == HEADS.get(arch, 1) for w in widths)
    assert all(w["bias_added"] == (WIDTH_ARCHS[arch] if compensation else []) for w in widths)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("sparse", [
    {"structure": "ShortGPT", "depth": {"remove": 0}},
    {"structure": "Contiguous", "depth": {"remove": 0}},
    {"structure": "Width", "width": {"heads": 0, "channels": 0}}], ids=lambda s: s["structure"])
def test_removing_nothing_is_the_identity(arch, sparse, tiny_tokenizer):
    model = arch_model(arch, layers=3)
    dense, config = copy.deepcopy(model.state_dict()), model.config.to_dict()
    llmc.prune(model, tiny_tokenizer, _config(sparse),
               calibration=torch.cat(token_batches(3, 16, seed=1)))
    state = model.state_dict()
    assert state.keys() == dense.keys()
    assert all(torch.equal(state[name], dense[name]) for name in dense)
    assert model.config.to_dict() == config


def test_shortgpt_then_wanda_from_the_command_line(cli, run_config, tmp_path):
    """Remove a block, then Wanda 50% on what remains: the saved model has one block, its
    Linears half zeros; results.json says what was removed and the sizes before and after, and
    llmc report shows them and plots perplexity against the parameters removed."""
    raw = yaml.safe_load(run_config.read_text())
    raw["sparse"] = {"structure": "ShortGPT", "depth": {"remove": 1}, "method": "Wanda",
                     "weight": {"sparsity": 0.5}}
    run_config.write_text(yaml.safe_dump(raw))
    code, stderr = cli("--config", run_config)
    assert code == 0, stderr
    save = Path(raw["save"]["save_path"])
    results = json.loads((save / "results.json").read_text())
    structure = results["structure"]
    assert structure["method"] == {"name": "ShortGPT", "depth": {"remove": 1.0}}
    assert structure["blocks"] == {"before": 2, "after": 1}
    assert len(structure["block_influence"]) == 2
    assert structure["checkpoint_bytes"]["after"] < structure["checkpoint_bytes"]["before"]
    assert results["engine"]["load"] == "memory"
    assert set(results["ppl"]) == {"pretrain", "transformed"}
    saved = save / "transformed_model"
    assert json.loads((saved / "config.json").read_text())["num_hidden_layers"] == 1
    weights = load_file(saved / "model.safetensors")
    for name, weight in weights.items():
        if name.startswith("model.layers.") and name.endswith("proj.weight"):
            assert (weight == 0).float().mean().item() == 0.5, name
    code, stderr = cli("report", save, "--plots", tmp_path / "plots")
    assert code == 0, stderr
    assert (tmp_path / "plots" / "ppl_vs_params_removed.png").is_file()


def test_report_shows_what_was_removed(cli, run_config, capsys):
    raw = yaml.safe_load(run_config.read_text())
    raw["sparse"] = {"structure": "Width", "width": {"heads": 1, "channels": 16},
                     "method": "none", "weight": {"sparsity": 0}}
    raw["eval"]["eval_pos"] = ["transformed"]
    run_config.write_text(yaml.safe_dump(raw))
    assert cli("--config", run_config)[0] == 0
    from llmc.cli import main
    assert main(["report", raw["save"]["save_path"], "--csv", "--no-plots"]) == 0
    (cells,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert cells["structure"] == "Width" and cells["method"] == "none"
    assert cells["removed"] == "1 KV groups, 16 channels per block"
    results = json.loads((Path(raw["save"]["save_path"]) / "results.json").read_text())
    parameters = results["structure"]["parameters"]
    assert float(cells["params removed"]) == pytest.approx(
        1 - parameters["after"] / parameters["before"])
    assert int(cells["parameters (dense)"]) == parameters["before"]


@pytest.mark.parametrize("change, message", [
    ({"sparse.weight.sparsity": 0.5}, "sparse.method none prunes no weights"),
    ({"sparse.width": {"heads": 1}},
     "sparse.width is a setting of structure: Width; structure: ShortGPT + none does not use it"),
    ({"sparse.structure": "Shortgpt"}, "unknown structured method 'Shortgpt'"),
])
def test_a_structured_run_it_cannot_do_is_one_error_line(cli, run_config, change, message):
    raw = yaml.safe_load(run_config.read_text())
    raw["sparse"] = {"structure": "ShortGPT", "depth": {"remove": 1}, "method": "none",
                     "weight": {"sparsity": 0}}
    run_config.write_text(yaml.safe_dump(raw))
    argv = ["--config", run_config]
    for key, value in change.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    code, stderr = cli(*argv)
    assert code == 2
    assert message in error_line(stderr)
    assert not Path(raw["save"]["save_path"]).exists()
