"""llmc.prune on a model object == the CLI on the same model saved to disk, for every shipped
config (every method, step and allocation): the same weights bit for bit and the same record,
with the calibration given as texts to the one and as a local file to the other."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import llmc
from conftest import random_text, save_model_dir, tiny_model
from llmc.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = (sorted(Path(__file__).parents[2].glob("configs/sparse/*.yml"))
           + sorted(Path(__file__).parents[2].glob("configs/structured/*.yml")))
TEXTS = [random_text(300, seed) for seed in range(4)]
# What a CLI run and llmc.prune record differently by nature: when and where they ran, how the
# model came (a checkpoint's files, hashed; an object), and where things are on disk.
NOT_COMPARED = {"run_id", "timings", "run", "saved_model", "plan_plot"}


def tiny_overrides(calib_path, config=None):
    """A shipped config shrunk to a tiny model: local calibration, no evaluation; a structured
    method's amounts for 2 blocks of 64 channels."""
    structure = (yaml.safe_load(Path(config).read_text())["sparse"].get("structure")
                 if config else None)
    amounts = ({"sparse.width.channels": 16} if structure == "Width" else
               {"sparse.depth.remove": 1} if structure else {})
    return {"calib.name": "wikitext2", "calib.path": str(calib_path), "calib.n_samples": 4,
            "calib.seq_len": 32, "eval.eval_pos": [], **amounts}


def unsaved(config):
    """The shipped config as a dict without its save section: llmc.prune writes nothing."""
    raw = yaml.safe_load(Path(config).read_text())
    del raw["save"]
    return raw


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_tokenizer):
    """(directory of a tiny Llama + tokenizer, calibration .jsonl holding TEXTS)."""
    directory = save_model_dir(tiny_model("llama", seed=5), tiny_tokenizer, tmp_path / "model")
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    return directory, calib


def cli_run(config, directory, overrides, save_path):
    argv = ["--config", str(config), "--set", f"model.path={directory}",
            "--set", f"save.save_path={save_path}", "--set", "save.save_trans=true"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0
    results = json.loads((Path(save_path) / "results.json").read_text())
    weights = load_file(Path(save_path) / "transformed_model" / "model.safetensors")
    return results, weights


def comparable(record):
    kept = {key: value for key, value in record.items() if key not in NOT_COMPARED}
    kept["config"] = {**kept["config"], "model": {**kept["config"]["model"], "path": None},
                      "save": None}
    kept["engine"] = {**kept["engine"], "why": None}
    kept["inputs"] = {**kept["inputs"], "model": None}
    if "structure" in kept:  # the bytes of the saved checkpoint: llmc.prune saved none here
        kept["structure"] = {**kept["structure"], "checkpoint_bytes": None}
    if "column_orders" in kept:
        kept["column_orders"] = {**kept["column_orders"], "file": None}
    return without_seconds(json.loads(json.dumps(kept)))  # as results.json has it (lists)


def without_seconds(value):
    """`value` without the times recorded inside it (MixGPT's sensitivity pass: "seconds")."""
    if isinstance(value, dict):
        return {k: without_seconds(v) for k, v in value.items() if k != "seconds"}
    return [without_seconds(v) for v in value] if isinstance(value, list) else value


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_prune_equals_the_cli_bitwise(config, tiny_checkpoint, tmp_path, tiny_tokenizer,
                                      monkeypatch):
    directory, calib = tiny_checkpoint
    overrides = tiny_overrides(calib, config)
    results, cli_weights = cli_run(config, directory, overrides, tmp_path / "cli")

    model = AutoModelForCausalLM.from_pretrained(directory)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where the config's relative save_path points
    calibrates = "magnitude" not in config.stem  # Magnitude reads no data: none may be given
    result = llmc.prune(model, tiny_tokenizer, unsaved(config), overrides=overrides,
                        calibration=TEXTS if calibrates else None)

    assert result.model is model
    state = model.state_dict()
    assert set(state) >= set(cli_weights)
    assert set(state) == set(cli_weights)  # a structured run: the same smaller model
    for name, saved in cli_weights.items():
        assert torch.equal(state[name], saved), name
    assert comparable(result.record) == comparable(results)
    assert result.sparsity == results["sparsity"] and result.plan == results["plan"]
    assert result.ppl == {} and result.saved_model is None
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing written: no save section


def test_a_checkpoint_path_is_loaded_and_pruned_as_the_cli_does(tiny_checkpoint, tmp_path):
    directory, calib = tiny_checkpoint
    config = CONFIGS[[c.stem for c in CONFIGS].index("sparsegpt")]
    overrides = tiny_overrides(calib)
    results, cli_weights = cli_run(config, directory, overrides, tmp_path / "cli")

    result = llmc.prune(directory, None, unsaved(config), overrides=overrides)

    state = result.model.state_dict()
    for name, saved in cli_weights.items():
        assert torch.equal(state[name], saved), name
    assert result.record["inputs"]["model"] == results["inputs"]["model"]  # the same files
    assert result.record["config"]["model"]["path"] == directory


def test_evaluation_runs_only_when_asked_and_saving_writes_the_clis_outputs(
        tiny_checkpoint, tmp_path, tiny_tokenizer):
    directory, calib = tiny_checkpoint
    evaluation = tmp_path / "wikitext2.jsonl"
    evaluation.write_text("".join(json.dumps({"text": random_text(80, 100 + s)}) + "\n"
                                  for s in range(6)))
    config = {"sparse": {"method": "Wanda"},
              "calib": {"n_samples": 4, "seq_len": 32, "preproc": "wikitext2_gptq"}}
    model = AutoModelForCausalLM.from_pretrained(directory)
    quiet = llmc.prune(model, tiny_tokenizer, config, calibration=TEXTS)
    assert quiet.ppl == {} and quiet.sparsity["overall"] == pytest.approx(0.5)

    asked = {**config, "eval": {"eval_pos": ["pretrain", "transformed"], "name": "wikitext2",
                                "path": str(evaluation), "seq_len": 32},
             "save": {"save_trans": True, "save_path": str(tmp_path / "saved")}}
    again = AutoModelForCausalLM.from_pretrained(directory)
    result = llmc.prune(again, tiny_tokenizer, asked, calibration=TEXTS)
    assert set(result.ppl) == {"pretrain", "transformed"}
    assert result.ppl["transformed"]["wikitext2"] > result.ppl["pretrain"]["wikitext2"] > 1
    assert result.saved_model == str(tmp_path / "saved" / "transformed_model")
    on_disk = json.loads((tmp_path / "saved" / "results.json").read_text())
    assert on_disk["ppl"] == result.ppl and on_disk["run_id"] == result.record["run_id"]
    saved = load_file(tmp_path / "saved" / "transformed_model" / "model.safetensors")
    for name, tensor in saved.items():
        assert torch.equal(again.state_dict()[name], tensor), name
    for name, tensor in model.state_dict().items():  # the two calls: the same weights
        assert torch.equal(again.state_dict()[name], tensor), name


def test_a_save_path_alone_writes_the_record_and_not_the_model(tiny_checkpoint, tmp_path,
                                                              tiny_tokenizer):
    directory, _ = tiny_checkpoint
    config = {"sparse": {"method": "Magnitude"}, "save": {"save_path": str(tmp_path / "out")}}
    result = llmc.prune(AutoModelForCausalLM.from_pretrained(directory), None, config)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["sparsity"] == result.sparsity and result.saved_model is None
    assert not (tmp_path / "out" / "transformed_model").exists()
    assert (tmp_path / "out" / "config.yml").is_file()


def test_two_calls_in_one_process_equal_two_cli_runs(tiny_checkpoint, tmp_path, tiny_tokenizer):
    directory, calib = tiny_checkpoint
    config = CONFIGS[[c.stem for c in CONFIGS].index("owl_sparsegpt")]
    overrides = tiny_overrides(calib)
    first = cli_run(config, directory, overrides, tmp_path / "one")[1]
    second = cli_run(config, directory, overrides, tmp_path / "two")[1]
    models = [AutoModelForCausalLM.from_pretrained(directory) for _ in range(2)]
    for model in models:
        llmc.prune(model, tiny_tokenizer, unsaved(config), overrides=overrides,
                   calibration=TEXTS)
    for name in first:
        assert torch.equal(first[name], second[name])
        for model in models:
            assert torch.equal(model.state_dict()[name], first[name]), name


def test_run_is_what_the_cli_does(run_config, tmp_path):
    result = llmc.run(str(run_config), overrides=["sparse.weight.sparsity=0.6"])
    on_disk = json.loads((tmp_path / "save" / "results.json").read_text())
    assert json.loads(json.dumps(result.record)) == on_disk and result.model is None
    assert result.sparsity["overall"] == pytest.approx(0.6, abs=0.01)  # whole rows of 32, 64
    assert result.saved_model == str(tmp_path / "save" / "transformed_model")
