"""The command line, end to end on a tiny model, and its errors for bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from conftest import error_line
from llmc.cli import main


def test_run_end_to_end(run_config, tmp_path):
    assert main(["--config", str(run_config)]) == 0
    results = json.loads((tmp_path / "save" / "results.json").read_text())
    assert set(results) >= {"config", "ppl", "sparsity", "timings", "versions", "plan"}
    pretrain = results["ppl"]["pretrain"]["wikitext2"]
    transformed = results["ppl"]["transformed"]["wikitext2"]
    assert pretrain > 1 and transformed > 1 and pretrain != transformed
    assert results["sparsity"]["overall"] == pytest.approx(0.5)
    assert len(results["sparsity"]["per_linear"]) == 2 * 7
    assert results["config"]["sparse"]["method"] == "Wanda"
    timings = results["timings"]
    assert 0 < timings["eval_pretrain_wikitext2"] < timings["total"]
    assert 0 < timings["prune_total"] < timings["total"]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "save" / "transformed_model")
    for name, module in saved.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            per_row = (module.weight == 0).float().mean(dim=1)
            assert ((per_row - 0.5).abs() <= 1 / module.in_features).all(), name
    assert not (saved.lm_head.weight == 0).any()
    assert yaml.safe_load((tmp_path / "save" / "config.yml").read_text())["calib"]["n_samples"] == 6
    # The outputs are links into the committed run's directory, which results.json names.
    current = tmp_path / "save" / ".llmc" / "current"
    assert os.readlink(current) == f"runs/{results['run_id']}"
    for name in ("results.json", "config.yml", "transformed_model"):
        assert os.readlink(tmp_path / "save" / name) == f".llmc/current/{name}"
    assert results["saved_model"] == str(tmp_path / "save" / "transformed_model")


def test_the_last_log_lines_summarise_the_run(run_config, tmp_path, capsys):
    assert main(["--config", str(run_config), "--set", "sparse.refine=dsnot"]) == 0
    results = json.loads((tmp_path / "save" / "results.json").read_text())
    stderr = capsys.readouterr().err
    summary = stderr[stderr.rindex("done: "):].splitlines()
    assert summary[0].endswith(f"done: Wanda + dsnot at 0.5 unstructured on "
                               f"{results['config']['model']['path']}")
    ppl = results["ppl"]
    assert summary[1] == (f"  ppl wikitext2 (dense -> pruned): "
                          f"{ppl['pretrain']['wikitext2']:.3f} -> "
                          f"{ppl['transformed']['wikitext2']:.3f}")
    assert summary[2].startswith(f"  sparsity over decoder Linears: "
                                 f"{results['sparsity']['overall']:.4f}; prune ")
    assert summary[3] == f"  outputs: {tmp_path / 'save'}"
    assert len(summary) == 4  # the last thing the run logs


def test_set_overrides_reach_the_run(run_config, tmp_path):
    assert main(["--config", str(run_config), "--set", "sparse.method=Magnitude",
                 "--set", "sparse.weight.sparsity_type=2:4", "--set", "eval.eval_pos=[]"]) == 0
    results = json.loads((tmp_path / "save" / "results.json").read_text())
    assert results["ppl"] == {} and results["plan"]["target"] == "2:4"
    assert results["sparsity"]["overall"] == pytest.approx(0.5)


def test_wanda_variant_run(run_config, tmp_path):
    assert main(["--config", str(run_config), "--set", "sparse.use_variant=true",
                 "--set", "eval.eval_pos=[transformed]"]) == 0
    results = json.loads((tmp_path / "save" / "results.json").read_text())
    assert abs(results["sparsity"]["overall"] - 0.5) < 0.02
    per_linear = list(results["sparsity"]["per_linear"].values())
    assert max(per_linear) - min(per_linear) < 0.1 and "pretrain" not in results["ppl"]


def test_sparsegpt_w4_run_records_wbits(run_config, tmp_path):
    assert main(["--config", str(run_config), "--set", "sparse.method=SparseGPT",
                 "--set", "sparse.wbits=4", "--set", "sparse.blocksize=16"]) == 0
    results = json.loads((tmp_path / "save" / "results.json").read_text())
    assert results["method"]["quantization"]["wbits"] == 4
    assert results["config"]["sparse"]["wbits"] == 4
    assert results["ppl"]["transformed"]["wikitext2"] > 1
    assert results["sparsity"]["overall"] >= 0.5
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "save" / "transformed_model")
    weight = saved.model.layers[0].mlp.down_proj.weight
    assert all(len(torch.unique(row)) <= 16 for row in weight)


def test_owl_run_records_and_plots_the_layer_vector(run_config, tmp_path, tiny_model_dir):
    pytest.importorskip("matplotlib")
    assert main(["--config", str(run_config), "--set", "sparse.method=OWL",
                 "--set", "sparse.weight.sparsity=0.7", "--set", "sparse.owl.lambda=0.1",
                 "--set", "model.path=" + tiny_model_dir("llama", seed=1, num_hidden_layers=4)]) == 0
    results = json.loads((tmp_path / "save" / "results.json").read_text())
    plan = results["plan"]
    assert plan["kind"] == "owl" and plan["units"] == ["0", "1", "2", "3"]
    assert abs(sum(plan["sparsity"]) / 4 - 0.7) < 1e-9 and len(set(plan["sparsity"])) > 1
    assert len(plan["score"]) == 4 and results["method"]["base"]["name"] == "Wanda"
    for layer, target in enumerate(plan["sparsity"]):
        achieved = results["sparsity"]["per_linear"][f"model.layers.{layer}.mlp.up_proj"]
        assert abs(achieved - target) < 1 / 32  # floor(cols * s) per row, 32 columns
    png = tmp_path / "save" / "plan.png"
    assert results["plan_plot"] == "plan.png" and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("override,message", [
    ("sparse.weight.sparsty=0.5", "unknown key 'sparse.weight.sparsty'"),
    ("sparse.weight.sparsity=1.5", "sparsity must be in [0, 1)"),
    ("sparse.weight.sparsity_type=3:2", "'3:2': N:M needs 0 < N < M"),
    ("calib.path=/missing/c4.json.gz", "calib.path: '/missing/c4.json.gz' does not exist"),
])
def test_bad_input_one_message_exit_2(run_config, capsys, override, message):
    assert main(["--config", str(run_config), "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.count("llmc: error:") == 1


def test_bad_config_fails_fast_as_a_process_and_keeps_existing_outputs(run_config, tmp_path):
    kept = tmp_path / "save" / "transformed_model"
    kept.mkdir(parents=True)
    (kept / "weights.bin").write_text("earlier run")
    done = subprocess.run([sys.executable, "-m", "llmc", "--config", str(run_config)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    # Fast: refused before anything was loaded, so it logged nothing (no loguru line).
    line = error_line(done.stderr)
    assert "already exists" in line and "save.overwrite" in line
    assert not [text for text in done.stderr.splitlines() if " | INFO " in text], done.stderr
    assert (kept / "weights.bin").read_text() == "earlier run"


def test_mixgpt_run_records_plan_achieved_and_reuses_its_traces(run_config, tmp_path,
                                                                tiny_model_dir):
    pytest.importorskip("matplotlib")
    args = ["--config", str(run_config), "--set", "sparse.method=MixGPT",
            "--set", "sparse.mixgpt.granularity=linear", "--set", "sparse.mixgpt.weighted=true",
            "--set", "sparse.mixgpt.sensitivity.max_iter=10", "--set", "sparse.blocksize=16",
            "--set", "model.path=" + tiny_model_dir("llama", seed=1, num_hidden_layers=2)]
    assert main(args) == 0
    save = tmp_path / "save"
    results = json.loads((save / "results.json").read_text())
    plan = results["plan"]
    assert plan["kind"] == "mixgpt" and plan["score_name"] == "sensitivity"
    assert len(plan["units"]) == len(plan["score"]) == 14 and len(set(plan["sparsity"])) == 14
    for target, achieved in zip(plan["sparsity"], plan["achieved"]):
        assert abs(achieved - target) <= 1 / 32  # the tiny Linears have 32 or more columns
    assert results["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
    sensitivity = results["method"]["sensitivity"]
    assert sensitivity["probes"] == 10 and not sensitivity["reused"] and sensitivity["blockwise"]
    cached = json.loads((save / "sensitivity.json").read_text())
    assert len(cached["value"]["traces"]) == len(cached["value"]["linears"]) == 14
    assert cached["key"]["max_iter"] == 10
    assert (save / "plan.png").read_bytes()[:4] == b"\x89PNG"

    assert main(args + ["--set", "save.overwrite=true"]) == 0  # same model and data: reused
    again = json.loads((save / "results.json").read_text())
    assert again["method"]["sensitivity"]["reused"] and again["plan"]["score"] == plan["score"]
    # bitwise: the rerun repeats the same operations in the same order in the same process
    assert again["ppl"]["transformed"] == results["ppl"]["transformed"]
