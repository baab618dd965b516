"""scripts/bench_cuda.py, dry-run on a CPU at its tiny shape: the synthetic checkpoint, its
Wanda 50% and 2:4 copies (made once, kept for a rerun) and bench-model's JSON over the three.
On a CPU there is no kernel row; the GPU run is a report (docs/performance.md), not a test."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_cuda  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_dry_run_measures_the_dense_the_50_and_the_2_4_model(tmp_path, capsys):
    argv = ["--work", str(tmp_path / "work"), "--shape", "tiny", "--device", "cpu",
            "--windows", "2", "--seq-len", "16", "--repeats", "1", "--json",
            str(tmp_path / "bench.json"),
            "--bench=--prompt 8 --new-tokens 2 --batch 1"]
    assert bench_cuda.main(argv) == 0
    record = json.loads((tmp_path / "bench.json").read_text())
    dense, half, two_four = record["models"]
    assert [Path(m["path"]).name for m in record["models"]] == [
        "dense-tiny", "wanda-50-tiny", "wanda-2-4-tiny"]
    assert [m["dtype"] for m in record["models"]] == ["bfloat16"] * 3
    assert (dense["two_four_linears"], half["two_four_linears"],
            two_four["two_four_linears"]) == (0, 0, 7 * 2)
    block_weights = 2 * (4 * 128 * 128 + 3 * 128 * 256)
    for model in (half, two_four):
        assert dense["nonzero_parameters"] - model["nonzero_parameters"] == pytest.approx(
            block_weights / 2, abs=block_weights * 0.001)
    marker = tmp_path / "work" / "wanda-2-4-tiny" / bench_cuda.DONE
    made = marker.stat().st_mtime_ns
    assert bench_cuda.main(argv) == 0  # a rerun measures the models already made
    assert marker.stat().st_mtime_ns == made
