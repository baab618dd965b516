"""`llmc report` over tiny runs: the table's rows and figures, CSV, plots, old layouts, errors."""
import csv
import io
import json
import shutil

import pytest

from llmc.cli import main
from llmc.report.runs import find_runs
from llmc.report.table import columns, markdown, rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer, one_torch_thread):
    """Three finished tiny runs under one directory: Wanda at 0.3 (dense measured) and 0.6 (not:
    as a sweep's later runs), Magnitude 2:4 with the cloze task."""
    import yaml

    from conftest import random_text, tiny_model

    root = tmp_path_factory.mktemp("report")
    model = root / "model"
    tiny_model("llama").save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    data = root / "text.jsonl"
    data.write_text("".join(json.dumps({"text": random_text(120, s)}) + "\n" for s in range(6)))
    config = {"base": {"seed": 0, "device": "cpu"},
              "model": {"type": "Llama", "path": str(model)},
              "calib": {"name": "wikitext2", "path": str(data), "n_samples": 4, "seq_len": 32},
              "eval": {"name": "wikitext2", "path": str(data), "seq_len": 32},
              "sparse": {"method": "Wanda"}, "save": {"save_path": str(root / "x")}}
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(config))
    sweep = root / "sweep"
    for name, sets in [("wanda_0.3", ["sparse.weight.sparsity=0.3"]),
                       ("wanda_0.6", ["sparse.weight.sparsity=0.6",
                                      "eval.eval_pos=[transformed]"]),
                       ("magnitude_2-4", ["sparse.method=Magnitude",
                                          "sparse.weight.sparsity_type=2:4",
                                          "eval.tasks=[cloze]", "eval.cloze_paragraphs=6"])]:
        argv = ["--config", path, "--set", f"save.save_path={sweep / name}", "--log-level",
                "WARNING"]
        for override in sets:
            argv += ["--set", override]
        assert main([str(a) for a in argv]) == 0
    return sweep


def results_of(sweep, name):
    return json.loads((sweep / name / "results.json").read_text())


def test_one_row_per_run_with_its_figures(runs):
    table = {row["run"].rsplit("/", 1)[1]: row for row in rows(find_runs([runs]))}
    assert sorted(table) == ["magnitude_2-4", "wanda_0.3", "wanda_0.6"]
    for name, row in table.items():
        results = results_of(runs, name)
        assert row["method"] == results["method"]["name"]
        assert row["wikitext2 ppl"] == results["ppl"]["transformed"]["wikitext2"]
        assert row["achieved sparsity"] == results["sparsity"]["overall"]
        assert row["prune s"] == results["timings"]["prune_total"]
        assert row["calibration"] == ("none" if name.startswith("magnitude")
                                      else "wikitext2 4x32")
    dense = results_of(runs, "wanda_0.3")["ppl"]["pretrain"]["wikitext2"]
    assert "pretrain" not in results_of(runs, "wanda_0.6")["ppl"]
    # the same model and evaluation: the dense figure measured once serves every row
    assert {row["wikitext2 ppl (dense)"] for row in table.values()} == {dense}
    assert (table["wanda_0.3"]["sparsity"], table["wanda_0.6"]["sparsity"]) == (0.3, 0.6)
    assert table["magnitude_2-4"]["type"] == "2:4"
    cloze = results_of(runs, "magnitude_2-4")["tasks"]
    assert table["magnitude_2-4"]["cloze acc"] == cloze["transformed"]["cloze"]["acc"]
    assert table["magnitude_2-4"]["cloze acc (dense)"] == cloze["pretrain"]["cloze"]["acc"]
    assert "cloze acc" not in table["wanda_0.3"]


def test_markdown_and_csv_from_the_command(runs, capsys, tmp_path):
    assert main(["report", str(runs), "--no-plots"]) == 0
    text = capsys.readouterr().out.strip().splitlines()
    header = [cell.strip() for cell in text[0].strip("|").split("|")]
    assert header[:9] == ["run", "method", "base", "steps", "sparsity", "type", "wbits", "model",
                          "calibration"]
    assert header[-2:] == ["achieved sparsity", "prune s"]
    assert "cloze acc_stderr" not in header  # shown as ± beside the value
    assert len(text) == 2 + 3
    magnitude = next(line for line in text if "magnitude_2-4" in line)
    stderr = results_of(runs, "magnitude_2-4")["tasks"]["transformed"]["cloze"]["acc_stderr"]
    assert f"± {stderr:.4f}" in magnitude
    assert main(["report", str(runs), "--csv", "--no-plots"]) == 0
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(parsed) == 3
    assert "cloze acc_stderr" in parsed[0]
    by_run = {row["run"].rsplit("/", 1)[1]: row for row in parsed}
    assert float(by_run["wanda_0.6"]["wikitext2 ppl"]) == (
        results_of(runs, "wanda_0.6")["ppl"]["transformed"]["wikitext2"])


def test_plots_are_written(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    assert main(["report", str(runs), "--plots", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_vs_sparsity.png",
                                                     "layer_sparsity.png", "ppl_vs_sparsity.png"]
    assert all(p.stat().st_size > 1000 for p in out.iterdir())


def test_plot_series_are_one_line_per_method(runs):
    from llmc.report.plots import _panels

    found = find_runs([runs])
    series, dense = _panels(found, {"wikitext2 ppl"}.__contains__, " ppl")["wikitext2"]
    assert sorted(series) == ["Magnitude 2:4", "Wanda"]
    assert len(series["Wanda"]) == 2 and len(set(dense)) == 1


def test_a_first_layout_run_is_read(runs, tmp_path):
    """The first results.json layout: no schema, method, inputs, tasks or per-block sparsity."""
    old = tmp_path / "old"
    shutil.copytree(runs / "wanda_0.3", old, symlinks=False)
    results = json.loads((old / "results.json").read_text())
    for key in ("schema", "method", "inputs", "tasks", "run_id"):
        results.pop(key)
    results["sparsity"].pop("per_block")
    (old / "results.json").write_text(json.dumps(results))
    (run,) = find_runs([old])
    assert run.schema == 1
    (row,) = rows([run])
    assert row["method"] == "Wanda" and row["sparsity"] == 0.3
    assert row["wikitext2 ppl (dense)"] == results["ppl"]["pretrain"]["wikitext2"]
    from llmc.report.runs import layer_sparsity

    new = results_of(runs, "wanda_0.3")["sparsity"]["per_block"]
    assert layer_sparsity(results) == pytest.approx(new, abs=0.02)  # unweighted mean: close


def test_bad_input_is_one_error_line(runs, tmp_path, capsys):
    from conftest import error_line

    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in error_line(capsys.readouterr().err)
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.json" in error_line(capsys.readouterr().err)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "results.json").write_text(json.dumps({"schema": 99, "config": {}}))
    assert main(["report", str(newer)]) == 2
    assert "upgrade llmc" in error_line(capsys.readouterr().err)
    (newer / "results.json").write_text("{not json")
    assert main(["report", str(newer)]) == 2
    assert "cannot read" in error_line(capsys.readouterr().err)


def test_columns_keep_dense_before_pruned():
    table = [{"run": "a", "method": "Wanda", "c4 ppl (dense)": 1.0, "c4 ppl": 2.0,
              "achieved sparsity": 0.5, "prune s": 1.0}, {"run": "b", "x acc": 0.1}]
    assert columns(table)[-5:] == ["c4 ppl (dense)", "c4 ppl", "x acc", "achieved sparsity",
                                   "prune s"]
    assert "| a | Wanda |" in markdown(table)


def test_plots_have_labelled_axes_a_legend_and_a_line_per_method(runs, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from llmc.report import plots

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: figures.setdefault(path.name, fig))
    plots.write_plots(find_runs([runs]), tmp_path)
    for name, fig in figures.items():
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None, name
    (ppl,) = figures["ppl_vs_sparsity.png"].axes
    labels = sorted(line.get_label() for line in ppl.get_lines())
    assert labels == ["Magnitude 2:4", "Wanda", "dense"]  # Wanda's two runs: one line
    (layers,) = figures["layer_sparsity.png"].axes
    assert len(layers.get_lines()) == 3  # one per run
