"""The shell sweeps: each run into its own save path through the CLI, then one report; configs
checked before the first run; a finished run skipped when the sweep runs again."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import error_line

ROOT = Path(__file__).resolve().parents[2]


def sweep(script, *args, sweep_dir, methods=None):
    env = {**os.environ, "PYTHON": sys.executable, "SWEEP_DIR": str(sweep_dir),
           "OMP_NUM_THREADS": "1"}  # tiny models: one thread each is fastest
    if methods:
        env["METHODS"] = methods
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *map(str, args)], env=env,
                          capture_output=True, text=True, cwd=sweep_dir.parent)


def report_rows(sweep_dir):
    lines = (sweep_dir / "report.md").read_text().strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
            for line in lines[2:]]


def test_sweep_sparsity_runs_each_value_then_reports(run_config, tmp_path):
    out = tmp_path / "sweep"
    done = sweep("sweep_sparsity.sh", run_config, 0.3, 0.6, "--", "--set",
                 "save.save_trans=False", sweep_dir=out)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (json.loads((out / f"sparsity_{s}" / "results.json").read_text())
                     for s in ("0.3", "0.6"))
    assert abs(first["sparsity"]["overall"] - 0.3) < 0.02
    assert abs(second["sparsity"]["overall"] - 0.6) < 0.02
    assert "pretrain" in first["ppl"] and "pretrain" not in second["ppl"]  # dense measured once
    assert not (out / "sparsity_0.3" / "transformed_model").exists()  # the common --set
    rows = report_rows(out)
    assert [r["run"].rsplit("/", 1)[1] for r in rows] == ["sparsity_0.3", "sparsity_0.6"]
    dense = f"{first['ppl']['pretrain']['wikitext2']:.4f}"
    assert [r["wikitext2 ppl (dense)"] for r in rows] == [dense, dense]
    assert rows[1]["wikitext2 ppl"] == f"{second['ppl']['transformed']['wikitext2']:.4f}"
    assert done.stdout == (out / "report.md").read_text()
    if importlib.util.find_spec("matplotlib"):
        assert (out / "report" / "ppl_vs_sparsity.png").exists()

    again = sweep("sweep_sparsity.sh", run_config, 0.3, 0.6, sweep_dir=out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("is done; skipped") == 2
    assert json.loads((out / "sparsity_0.6" / "results.json").read_text()) == second


def test_sweep_methods_runs_each_method(run_config, tmp_path):
    out = tmp_path / "methods"
    done = sweep("sweep_methods.sh", run_config, 0.5, "2:4", "--", "--set",
                 "save.save_trans=False", sweep_dir=out, methods="Magnitude Wanda")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = report_rows(out)
    assert [(r["method"], r["type"], r["achieved sparsity"]) for r in rows] == [
        ("Magnitude", "2:4", "0.5000"), ("Wanda", "2:4", "0.5000")]


def test_a_bad_value_fails_before_any_run(run_config, tmp_path):
    out = tmp_path / "bad"
    done = sweep("sweep_sparsity.sh", run_config, 0.3, 7, sweep_dir=out)
    assert done.returncode == 2
    assert "sparse.weight.sparsity=7" in error_line(done.stderr)
    assert not out.exists()
