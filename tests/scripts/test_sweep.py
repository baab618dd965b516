"""The sweep script runs a config per sparsity and collects one CSV row per run and dataset."""
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_collects_each_run(run_config, tmp_path):
    out = tmp_path / "sweep.csv"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config",
                           str(run_config), "--sparsity", "0.3", "0.6", "--out", str(out),
                           "--set", "save.save_trans=False"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert [float(r["sparsity"]) for r in rows] == [0.3, 0.6]
    assert {r["dataset"] for r in rows} == {"wikitext2"}
    assert rows[0]["ppl_pretrain"] == rows[1]["ppl_pretrain"] != ""  # dense measured once
    assert abs(float(rows[0]["achieved_sparsity"]) - 0.3) < 0.02
    assert abs(float(rows[1]["achieved_sparsity"]) - 0.6) < 0.02
    assert float(rows[1]["ppl_transformed"]) != float(rows[0]["ppl_transformed"])
    for row in rows:
        assert Path(row["results"]).exists()
