"""What results.json records, that it is strict JSON, and that a rerun reproduces the weights."""
import datetime
import json
import hashlib
import math
from pathlib import Path

import pytest
import yaml

from saved_run import saved_weights
from conftest import error_line
from llmc import stages
from llmc.strict_json import dumps_strict


def strict_load(path):
    def refuse(token):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_strict_json_writes_non_finite_floats_as_null_with_where_and_what():
    text = dumps_strict({"ppl": {"pretrain": {"c4": math.nan}, "transformed": {"c4": 3.5}},
                         "plan": {"score": [1.0, -math.inf]}})
    loaded = json.loads(text, parse_constant=lambda token: pytest.fail(token))
    assert loaded["ppl"] == {"pretrain": {"c4": None}, "transformed": {"c4": 3.5}}
    assert loaded["plan"]["score"] == [1.0, None]
    assert loaded["non_finite"] == {"ppl.pretrain.c4": "nan, written as null",
                                    "plan.score[1]": "-inf, written as null"}
    assert "non_finite" not in json.loads(dumps_strict({"ppl": {"x": {"y": 2.0}}}))


def test_results_record_where_and_with_what_the_run_ran(cli, run_config, tmp_path):
    code, err = cli("--config", run_config, "--set", "eval.eval_pos=[transformed]")
    assert code == 0, err
    results = strict_load(tmp_path / "save" / "results.json")
    inputs = results["inputs"]
    assert len(inputs["calib_tokens_sha256"]) == 64
    assert list(inputs["eval_tokens_sha256"]) == ["wikitext2"]
    assert len(inputs["eval_tokens_sha256"]["wikitext2"]) == 64
    model_dir = Path(yaml.safe_load(run_config.read_text())["model"]["path"])
    weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert inputs["model"]["files"] == {"model.safetensors": weights}  # what sha256sum prints
    run = results["run"]
    assert run["device"].startswith("cpu")
    started = datetime.datetime.fromisoformat(run["started_utc"])
    finished = datetime.datetime.fromisoformat(run["finished_utc"])
    assert started.utcoffset() == datetime.timedelta(0) and started <= finished
    assert run["git"] is None or (len(run["git"]["commit"]) == 40
                                  and run["git"]["dirty"] in (True, False))
    for package in ("torch", "transformers", "numpy", "tokenizers", "safetensors", "accelerate"):
        assert package in results["versions"]
    assert results["versions"]["torch"] and results["versions"]["numpy"]


def test_a_pretrain_ppl_that_is_nan_is_recorded_as_null_with_the_reason(cli, run_config, tmp_path,
                                                                         monkeypatch):
    real = stages.perplexity

    def nan_before_pruning(*args, desc, **kwargs):
        ppl, speed = real(*args, desc=desc, **kwargs)
        return (math.nan if desc.startswith("pretrain") else ppl), speed

    monkeypatch.setattr(stages, "perplexity", nan_before_pruning)
    code, err = cli("--config", run_config)
    assert code == 0, err
    results = strict_load(tmp_path / "save" / "results.json")
    assert results["ppl"]["pretrain"]["wikitext2"] is None
    assert results["ppl"]["transformed"]["wikitext2"] > 1
    assert results["non_finite"] == {"ppl.pretrain.wikitext2": "nan, written as null"}


def test_a_pruned_model_with_nan_ppl_fails_and_saves_nothing(cli, run_config, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(stages, "perplexity", lambda *a, desc, **k: (
        math.inf if desc.startswith("transformed") else 20.0, 1.0))
    code, err = cli("--config", run_config)
    assert code == 2
    line = error_line(err)
    assert "perplexity on wikitext2 is inf (dense: 20.0000)" in line and "no outputs" in line
    save = tmp_path / "save"
    assert not (save / "results.json").exists() and not (save / "transformed_model").exists()


def test_a_rerun_reproduces_the_weights_bit_for_bit(cli, run_config, tmp_path):
    for name, seed in (("first", 0), ("second", 0), ("other_windows", 1)):
        code, err = cli("--config", run_config, "--set", "eval.eval_pos=[]",
                        "--set", "sparse.method=SparseGPT", "--set", "sparse.blocksize=16",
                        "--set", f"calib.seed={seed}", "--set", f"save.save_path={tmp_path / name}")
        assert code == 0, err
    first, second = (saved_weights(tmp_path / name) for name in ("first", "second"))
    assert first.keys() == second.keys()
    for key in first:  # the same operations in the same order on one machine: bitwise
        assert first[key].numpy().tobytes() == second[key].numpy().tobytes(), key
    first, second, other = (strict_load(tmp_path / name / "results.json")
                            for name in ("first", "second", "other_windows"))
    assert first["sparsity"] == second["sparsity"]
    assert first["inputs"] == second["inputs"]
    assert first["inputs"]["calib_tokens_sha256"] != other["inputs"]["calib_tokens_sha256"]
