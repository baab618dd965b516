"""`llmc report` on results.json files edited by hand or written by another tool: a wrong type,
a NaN literal, a string schema, or --plots under a file is one `llmc: error:` line naming the
file and the field (llmc/report/fields.py), never a traceback or a silent `nan`."""
import json

import pytest

from conftest import error_line
from llmc.cli import main

VALID = {
    "schema": 2, "run_id": "x",
    "config": {"model": {"path": "/m"}, "calib": {"name": "builtin", "n_samples": 4,
                                                  "seq_len": 32},
               "eval": {"names": ["builtin"]},
               "sparse": {"method": "Wanda", "weight": {"sparsity": 0.5,
                                                        "sparsity_type": "unstructured"}}},
    "method": {"name": "Wanda", "update": {"name": "admm", "rho": 1.0}},
    "ppl": {"pretrain": {"builtin": 15.0}, "transformed": {"builtin": 30.0}},
    "tasks": {"transformed": {"cloze": {"acc": 0.4, "acc_stderr": 0.01}}},
    "sparsity": {"overall": 0.5, "per_block": [0.5, 0.5],
                 "per_linear": {"model.layers.0.q": 0.5}},
    "timings": {"prune_total": 1.5},
    "inputs": {"model": {"sha256": "ab"}, "calib_tokens_sha256": "cd"},
}


def write(tmp_path, results, text=None):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "results.json").write_text(text if text is not None else json.dumps(results))
    return run


def report(capsys, *argv):
    code = main(["report", *map(str, argv)])
    return code, capsys.readouterr()


def test_the_valid_file_reports(tmp_path, capsys):
    code, out = report(capsys, write(tmp_path, VALID), "--no-plots")
    assert code == 0 and "Wanda" in out.out and "30.0000" in out.out


def test_json_nested_too_deep_is_one_line(tmp_path, capsys):
    run = write(tmp_path, None, "[" * 100000 + "]" * 100000)
    code, out = report(capsys, run, "--no-plots")
    assert code == 2 and str(run / "results.json") in error_line(out.err)


def edit(path, value):
    results = json.loads(json.dumps(VALID))
    *parents, last = path.split(".")
    node = results
    for key in parents:
        node = node[key]
    node[last] = value
    return results


@pytest.mark.parametrize("field,value", [
    ("method", "Wanda"),                  # a string method
    ("method.name", 3),
    ("ppl", [1, 2]),                      # a list ppl
    ("ppl.transformed", 30.0),
    ("ppl.transformed.builtin", "30"),
    ("tasks.transformed.cloze", [0.4]),
    ("tasks.transformed.cloze.acc", {"v": 1}),
    ("sparsity.per_block", "half"),
    ("sparsity.overall", True),
    ("timings", [1]),
    ("config.sparse", "Wanda"),
    ("config.sparse.weight", 0.5),
])
def test_a_field_of_the_wrong_type_is_one_line_naming_file_and_field(
        tmp_path, capsys, field, value):
    run = write(tmp_path, edit(field, value))
    code, out = report(capsys, run, "--no-plots")
    line = error_line(out.err)
    assert code == 2 and str(run / "results.json") in line and f"field {field} " in line, line


@pytest.mark.parametrize("field", ["ppl", "tasks", "sparsity", "method", "config.sparse",
                                   "ppl.transformed", "sparsity.per_block", "timings",
                                   "method.update", "method.name", "tasks.transformed.cloze"])
def test_a_null_section_is_read_as_not_recorded(tmp_path, capsys, field):
    code, out = report(capsys, write(tmp_path, edit(field, None)), "--plots",
                       tmp_path / "plots")
    assert code == 0, out.err
    assert "Traceback" not in out.err


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_literal_is_refused_not_printed(tmp_path, capsys, literal):
    text = json.dumps(VALID).replace("30.0", literal)
    run = write(tmp_path, None, text)
    code, out = report(capsys, run, "--no-plots")
    line = error_line(out.err)
    assert code == 2 and literal in line and str(run / "results.json") in line
    assert "nan" not in out.out.lower() and "inf" not in out.out.lower()


@pytest.mark.parametrize("schema,words", [("2", 'the field schema is "2"'),
                                          (0, "the field schema is 0"),
                                          (9, "newer than this llmc reads")])
def test_a_bad_schema_says_what_is_wrong(tmp_path, capsys, schema, words):
    code, out = report(capsys, write(tmp_path, {**VALID, "schema": schema}), "--no-plots")
    assert code == 2 and words in error_line(out.err)


def test_plots_under_a_file_is_one_line_before_any_output(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, out = report(capsys, write(tmp_path, VALID), "--plots", tmp_path / "file" / "plots")
    assert code == 2 and "is a file, not a directory" in error_line(out.err)
    assert out.out == ""


def test_argument_errors_use_the_llmc_prefix(capsys):
    code, out = report(capsys, "--bogus")
    assert code == 2 and error_line(out.err).startswith("llmc: error: report:")
