"""Outputs of the layout before .llmc (real files at the top level, an older llmc's temporaries):
refused without overwrite, adopted with it, and what a kill during that left, finished."""
import os

import pytest

from conftest import error_line
from saved_run import FAST, OVERWRITE, assert_clean, committed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_outputs_of_an_older_llmc_are_refused_then_replaced_and_leftovers_removed(
        cli, run_config, tmp_path):
    save = tmp_path / "save"
    (save / "transformed_model").mkdir(parents=True)
    (save / "transformed_model" / "weights.bin").write_text("old model")
    for name in ("results.json", "config.yml", "plan.png"):
        (save / name).write_text(f"old {name}")
    leftovers = [save / name for name in (".results.json.k3x9", ".config.yml.abcd",
                                          ".sensitivity.json.q1", ".transformed_model.tmp-zz")]
    for path in leftovers[:3]:
        path.write_text("partial")
    leftovers[3].mkdir()
    (save / "sensitivity.json").write_text("MixGPT's cache")
    (save / ".llmc" / "scratch").mkdir(parents=True)
    (save / ".llmc" / "scratch" / "notes.txt").write_text("not llmc's")

    code, stderr = cli("--config", run_config, *FAST)
    assert code == 2 and f"'{save / 'results.json'}' already exists" in error_line(stderr)
    assert not any(os.path.lexists(path) for path in leftovers)
    assert (save / "results.json").read_text() == "old results.json"
    assert (save / "transformed_model" / "weights.bin").read_text() == "old model"

    code, stderr = cli("--config", run_config, *FAST, *OVERWRITE)
    assert code == 0, stderr
    committed(save)
    assert not os.path.lexists(save / "plan.png")  # the old run's, gone with it
    assert (save / "sensitivity.json").read_text() == "MixGPT's cache"
    assert (save / ".llmc" / "scratch" / "notes.txt").read_text() == "not llmc's"
    assert sorted(os.listdir(save / ".llmc")) == ["current", "runs", "scratch"]
    assert len(os.listdir(save / ".llmc" / "runs")) == 1


def test_a_model_moved_aside_by_an_older_llmc_killed_mid_replace_is_restored(cli, run_config,
                                                                            tmp_path):
    save = tmp_path / "save"
    (save / ".transformed_model.old-77").mkdir(parents=True)
    (save / ".transformed_model.old-77" / "weights.bin").write_text("previous model")
    (save / "results.json").write_text("previous results")
    code, stderr = cli("--config", run_config, *FAST)
    assert code == 2 and "already exists" in error_line(stderr)
    assert (save / "transformed_model" / "weights.bin").read_text() == "previous model"
    assert not os.path.lexists(save / ".transformed_model.old-77")
    assert not os.path.lexists(save / ".llmc")  # a refused run leaves no empty .llmc behind


def test_an_adoption_killed_halfway_is_finished_by_the_next_run(cli, run_config, tmp_path):
    """A kill while old outputs were being moved under .llmc: `current` names the legacy run
    directory, results.json is already in it without its link, config.yml still at the top."""
    save = tmp_path / "save"
    legacy = save / ".llmc" / "runs" / "legacy-20200101T000000Z"
    legacy.mkdir(parents=True)
    (legacy / "results.json").write_text("old results")
    os.symlink("runs/legacy-20200101T000000Z", save / ".llmc" / "current")
    (save / "config.yml").write_text("old config")

    code, stderr = cli("--config", run_config, *FAST)
    assert code == 2 and "already exists" in error_line(stderr)
    assert (save / "results.json").read_text() == "old results"  # linked again
    assert (save / "config.yml").read_text() == "old config"

    code, stderr = cli("--config", run_config, *FAST, *OVERWRITE)
    assert code == 0, stderr
    committed(save)
    assert_clean(save)
