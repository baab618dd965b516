"""save.bench at the end of a run: the saved model measured against its checkpoint into
results.json `bench`, and `llmc report`'s columns of what it buys (ratios to dense) and its
perplexity-against-decode-speed-up plot. Bench settings shrunk for tiny models; no timing is
asserted."""
import functools
import json

import pytest

import llmc.bench.measure
from llmc.report.plots import SPEED_PLOT, pyplot, write_plots
from llmc.report.runs import find_runs
from llmc.report.table import columns, rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# the bench's settings shrunk for tiny models (a prompt of 8, 2 new tokens, 1 timed run)
TinySettings = functools.partial(llmc.bench.measure.Settings, prompt=8, new_tokens=2, repeats=1)


@pytest.fixture
def benched(cli, run_config, tmp_path, monkeypatch):
    monkeypatch.setattr(llmc.bench.measure, "Settings", TinySettings)
    code, err = cli("--config", run_config, "--set", "save.bench=true")
    assert code == 0, err
    assert "what the pruned model buys (save.bench)" in err
    return tmp_path / "save"


def test_the_run_records_the_saved_model_against_its_checkpoint(benched):
    results = json.loads((benched / "results.json").read_text())
    dense, pruned = results["bench"]["models"]
    assert dense["path"] == results["config"]["model"]["path"]
    assert pruned["path"].endswith("transformed_model")
    assert pruned["parameters"] == dense["parameters"]
    assert pruned["nonzero_parameters"] < dense["nonzero_parameters"]
    for key in ("checkpoint_bytes", "decode_tokens_per_s_bs1", "prefill_tokens_per_s_bs8"):
        assert pruned["ratios"][key] == pytest.approx(pruned[key] / dense[key])
        assert dense["ratios"][key] == 1.0
    assert results["timings"]["bench"] > 0


def test_report_shows_what_each_run_buys_and_plots_it(benched, tmp_path):
    runs = find_runs([benched])
    (row,) = rows(runs)
    ratios = json.loads((benched / "results.json").read_text())["bench"]["models"][1]["ratios"]
    assert row["decode x bs1"] == ratios["decode_tokens_per_s_bs1"]
    assert row["checkpoint x"] == ratios["checkpoint_bytes"]
    shown = columns([row])
    assert shown.index("decode x bs8") < shown.index("achieved sparsity")
    if pyplot() is None:
        pytest.skip("matplotlib is not installed")
    written = write_plots(runs, tmp_path / "plots")
    assert tmp_path / "plots" / SPEED_PLOT in written


@pytest.mark.parametrize("settings, message", [
    (["--set", "save.save_trans=false"], "save.bench measures the saved model"),
])
def test_bench_settings_it_cannot_honour_are_one_error(settings, message, cli, run_config):
    code, err = cli("--config", run_config, "--set", "save.bench=true", *settings)
    assert code == 2 and message in err


def test_a_model_object_has_no_checkpoint_to_bench_against(tiny_tokenizer):
    from conftest import tiny_model
    import llmc

    with pytest.raises(llmc.ConfigError, match="a model object has none on disk"):
        llmc.prune(tiny_model("llama"), tiny_tokenizer,
                   {"calib": {"name": "builtin"}, "save": {"save_trans": True, "bench": True}})
