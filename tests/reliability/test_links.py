"""A run never deletes, renames or writes through a symbolic link out of save_path/.llmc/
(llmc/outputs/links.py, docs/outputs.md): each hostile layout is refused with one line naming
the link and where it points, and what the link leads to is untouched."""
import os
import shutil

import pytest

from conftest import error_line
from saved_run import FAST, OVERWRITE, committed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def outside(tmp_path):
    """A directory of someone else's, with a file and a run-like directory in it."""
    path = tmp_path / "outside"
    (path / "runs-like").mkdir(parents=True)
    (path / "precious.txt").write_text("keep me")
    (path / "runs-like" / "data.bin").write_bytes(b"\0" * 16)
    return path


def snapshot(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None)
                  for p in path.rglob("*"))


@pytest.fixture
def done(run_config, cli, tmp_path):
    """A save path holding one committed run; returns (argv, save path)."""
    save = tmp_path / "save"
    argv = ["--config", run_config, *FAST, "--set", f"save.save_path={save}"]
    code, stderr = cli(*argv)
    assert code == 0, stderr
    return argv, save


def relink(path, target):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


@pytest.mark.parametrize("entry,target", [
    (".llmc/current", "outside"),            # the committed run: removed by the next commit
    (".llmc/current", "runs/../../outside"),
    (".llmc/runs", "outside"),               # every other entry of runs/ is removed
    (".llmc", "outside"),
    (".llmc/scratch", "outside"),
    (".llmc/lock", "outside/precious.txt"),
])
def test_a_link_out_of_the_state_directory_is_refused_and_its_target_untouched(
        cli, done, outside, entry, target):
    argv, save = done
    before = snapshot(outside)
    if target == "outside":
        target = str(outside)
    relink(save / entry, target)
    code, stderr = cli(*argv, *OVERWRITE)
    line = error_line(stderr)
    assert code == 2 and ("symbolic link" in line or "points to" in line), line
    assert str(save / entry) in line and os.readlink(save / entry) in line
    assert snapshot(outside) == before


def test_a_committed_run_directory_that_is_a_link_is_refused(cli, done, outside):
    argv, save = done
    run = save / ".llmc" / os.readlink(save / ".llmc/current")
    os.rename(run, outside / "moved")
    os.symlink(outside / "moved", run)
    before = snapshot(outside)
    code, stderr = cli(*argv, *OVERWRITE)
    assert code == 2 and str(run) in error_line(stderr)
    assert snapshot(outside) == before


def test_a_scratch_directory_that_is_a_link_is_refused(cli, done, outside):
    argv, save = done
    (save / ".llmc/scratch").mkdir()
    os.symlink(outside, save / ".llmc/scratch/resume")
    before = snapshot(outside)
    code, stderr = cli(*argv, *OVERWRITE, "--set", "model.load=stream")
    assert code == 2 and "scratch/resume is a symbolic link" in error_line(stderr)
    assert snapshot(outside) == before


def test_an_activations_file_that_is_a_link_is_replaced_not_written_through(
        cli, run_config, tmp_path, outside):
    save = tmp_path / "save"
    (save / ".llmc/scratch/activations").mkdir(parents=True)
    os.symlink(outside / "precious.txt", save / ".llmc/scratch/activations/activations.bin")
    code, stderr = cli("--config", run_config, *FAST, "--set", f"save.save_path={save}",
                       "--set", "base.offload_activations=disk")
    assert code == 0, stderr
    assert (outside / "precious.txt").read_text() == "keep me"
    committed(save)


def test_a_lock_that_is_a_directory_says_so(cli, run_config, tmp_path):
    save = tmp_path / "save"
    (save / ".llmc/lock").mkdir(parents=True)
    code, stderr = cli("--config", run_config, *FAST, "--set", f"save.save_path={save}")
    line = error_line(stderr)
    assert code == 2 and "lock is a directory or special file" in line, line


@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_a_save_path_that_is_a_broken_link_says_so(cli, run_config, tmp_path, kind):
    save = tmp_path / "save"
    os.symlink(tmp_path / "nowhere" if kind == "dangling" else save, save)
    code, stderr = cli("--config", run_config, *FAST, "--set", f"save.save_path={save}")
    line = error_line(stderr)
    assert code == 2
    assert ("which does not exist" if kind == "dangling" else "loop of symbolic links") in line


@pytest.mark.parametrize("entry", [".llmc", ".llmc/runs", ".llmc/scratch", ".llmc/scratch/resume"])
def test_a_file_where_llmc_keeps_a_directory_says_so(cli, run_config, tmp_path, entry):
    save = tmp_path / "save"
    (save / entry).parent.mkdir(parents=True, exist_ok=True)
    (save / entry).write_text("someone's file")
    code, stderr = cli("--config", run_config, *FAST, "--set", f"save.save_path={save}")
    line = error_line(stderr)
    assert code == 2 and f"{save / entry} is a file, not the directory" in line, line
    assert (save / entry).read_text() == "someone's file"
