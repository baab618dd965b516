"""The save path and its outputs (docs/outputs.md): the lock, the writability probe, the one commit
point under SIGKILL at every named instant of the save and at random file-system operations,
SIGTERM/SIGINT, leftovers of killed runs and file modes (outputs of the layout before .llmc:
test_outputs_legacy.py).

Runs that must be signalled or killed are real processes (llmc_child: forked from a forkserver
that imported llmc once); everything else calls the CLI in-process."""
import errno
import json
import os
import random
import signal
import socket
import subprocess
import time

import pytest

import llmc_child
from conftest import error_line
from saved_run import FAST, NO_MODEL, OVERWRITE, OWL, assert_clean, committed, seed
from llmc.outputs.lock import proc_start_ticks

pytestmark = pytest.mark.usefixtures("one_torch_thread", "forkserver_started")


@pytest.fixture(scope="module")
def forkserver_started():
    """Start the forkserver first thing: it imports llmc while the in-process tests (first in
    this file) run, so the real-process tests (last) need not wait for it."""
    llmc_child.forkserver()


def start_child(run_config, tmp_path, *args, env=None, kill_at_op=None):
    stderr = tmp_path / f"child-{time.monotonic_ns()}.err"
    process = llmc_child.start(["--config", run_config, *args], env or {}, stderr, kill_at_op)
    return process, stderr


def pause_env(tmp_path, point):
    marker = tmp_path / f"paused-{point.replace(':', '_')}"
    return {"LLMC_PAUSE_AT": point, "LLMC_PAUSE_MARKER": str(marker)}, marker


# ---------------------------------------------------------------- the lock


def write_lock(save, text, age_s=0.0):
    (save / ".llmc").mkdir(parents=True)
    (save / ".llmc" / "lock").write_text(text)
    then = time.time() - age_s
    os.utime(save / ".llmc" / "lock", (then, then))


def owner(pid=None, host=None, proc_start=None):
    return json.dumps({"pid": pid or os.getpid(), "host": host or socket.gethostname(),
                       "started": "2020-01-01T00:00:00Z",
                       "proc_start": proc_start or proc_start_ticks(os.getpid())})


@pytest.mark.parametrize("lock,age_s", [
    (owner(proc_start=proc_start_ticks(os.getpid()) - 1), 0),  # our pid, another start: reused
    ("", 60),  # a run killed between creating its lock and writing it
], ids=["pid-reused", "left-unwritten"])
def test_a_stale_lock_is_taken_over(cli, run_config, tmp_path, lock, age_s):
    save = tmp_path / "save"
    write_lock(save, lock, age_s)
    code, stderr = cli("--config", run_config, *FAST)
    assert code == 0 and "taking over the stale lock of pid" in stderr
    assert_clean(save)


def test_a_live_lock_is_refused_naming_its_pid(cli, run_config, tmp_path):
    save = tmp_path / "save"
    write_lock(save, owner())  # this very process, alive
    code, stderr = cli("--config", run_config, *FAST)
    assert code == 2 and f"(pid {os.getpid()} on host" in error_line(stderr)
    assert (save / ".llmc" / "lock").read_text() == owner()  # not ours: left alone
    assert not (save / "results.json").exists()


def test_a_lock_from_another_host_is_refused_naming_the_host_and_the_file(cli, run_config,
                                                                          tmp_path):
    save = tmp_path / "save"
    write_lock(save, owner(pid=1, host="elsewhere.example"))
    code, stderr = cli("--config", run_config, *FAST)
    line = error_line(stderr)
    assert code == 2 and "another host (pid 1 on host elsewhere.example" in line
    assert f"delete {save / '.llmc' / 'lock'}" in line


# ---------------------------------------------------------------- unwritable save paths


def unwritable(tmp_path, kind, monkeypatch, request):
    """(save_path, the OS's reason) of an unwritable save path of this kind."""
    if kind == "under-a-file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "save", "Not a directory"
    if kind == "read-only-dir":
        locked = tmp_path / "locked"
        locked.mkdir()
        if os.geteuid() != 0:
            locked.chmod(0o500)
            return locked / "save", "Permission denied"
        # Permissions do not bind root; an immutable directory does (ext4 and others).
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode:
            pytest.skip("root, and no chattr +i here: cannot make a directory unwritable")
        request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(locked)]))
        return locked, "Operation not permitted"
    if kind == "disk-full":  # the probe's write reaches the disk only at its fsync
        def no_space(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", no_space)
        return tmp_path / "save", "No space left on device"
    return f"/{kind}/llmc-test", ""  # /proc, /sys: special filesystems


@pytest.mark.parametrize("kind", ["under-a-file", "read-only-dir", "disk-full", "proc", "sys"])
def test_an_unwritable_save_path_is_one_error_before_any_model_load(
        cli, run_config, tmp_path, monkeypatch, request, kind):
    path, reason = unwritable(tmp_path, kind, monkeypatch, request)

    def must_not_load(*args):
        raise AssertionError("loaded a tokenizer or model before checking save.save_path")

    monkeypatch.setattr("llmc.pipeline.load_tokenizer", must_not_load)
    monkeypatch.setattr("llmc.pipeline.load_for_run", must_not_load)
    code, stderr = cli("--config", run_config, "--set", f"save.save_path={path}")
    line = error_line(stderr)
    assert code == 2 and f"save.save_path '{path}'" in line and reason in line
    assert "choose a directory you can write to" in line
    if kind == "read-only-dir":
        assert os.listdir(path) == []
    else:  # disk-full: the probe file and the lock removed, and the directories the run made
        assert not os.path.exists(path)


def test_a_filesystem_without_symlinks_is_refused(cli, run_config, tmp_path, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError(1, "Operation not permitted", args[1])

    monkeypatch.setattr("llmc.outputs.probe.os.symlink", no_symlinks)
    code, stderr = cli("--config", run_config)
    line = error_line(stderr)
    assert code == 2 and "filesystem without symbolic links" in line
    assert not os.path.exists(tmp_path / "save")  # the probe, the lock, the directories made


# ---------------------------------------------------------------- modes


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755),
                                                      (0o002, 0o664, 0o775)])
def test_outputs_get_plain_modes_under_the_umask(cli, run_config, tmp_path, umask, file_mode,
                                                 dir_mode):
    save = tmp_path / "save"
    old = os.umask(umask)
    try:
        assert cli("--config", run_config, *FAST, *OWL)[0] == 0
    finally:
        os.umask(old)
    committed(save)
    seen = 0
    for folder, dirs, files in os.walk(save):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            want = dir_mode if os.path.isdir(path) else file_mode
            assert os.stat(path).st_mode & 0o777 == want, path
            seen += 1
    assert seen > 10  # the run directory, the model's files, results, config, plan


# ---------------------------------------------------------------- late failures


@pytest.mark.parametrize("point", ["save:results-written", "commit:links-made",
                                   "commit:before-switch"])
def test_a_run_failing_late_keeps_the_previous_outputs(cli, run_config, tmp_path, monkeypatch,
                                                       point):
    save = tmp_path / "save"
    assert cli("--config", run_config, *FAST, *NO_MODEL, *seed(1))[0] == 0
    previous = committed(save)
    monkeypatch.setenv("LLMC_FAIL_AT", point)
    code, stderr = cli("--config", run_config, *FAST, *OWL, *seed(2), *OVERWRITE)
    assert code == 2 and f"injected fault at {point}" in error_line(stderr)
    assert committed(save)["run_id"] == previous["run_id"]
    assert not (save / "plan.png").is_symlink()  # no dangling link from the failed commit
    assert_clean(save)


def test_overwrite_without_save_trans_leaves_no_model(cli, run_config, tmp_path):
    save = tmp_path / "save"
    assert cli("--config", run_config, *FAST, *seed(1))[0] == 0
    assert committed(save)["saved_model"] == str(save / "transformed_model")
    assert cli("--config", run_config, *FAST, *NO_MODEL, *seed(2), *OVERWRITE)[0] == 0
    results = committed(save)
    assert results["config"]["base"]["seed"] == 2 and "saved_model" not in results
    assert not os.path.lexists(save / "transformed_model")
    assert_clean(save)


# ---------------------------------------------------------------- real processes
# (the lock held, signals, SIGKILL during the save)


def test_a_second_run_is_refused_while_the_first_holds_the_lock(cli, run_config, tmp_path):
    save = tmp_path / "save"
    env, marker = pause_env(tmp_path, "run:started")
    process, _ = start_child(run_config, tmp_path, *FAST, env=env)
    llmc_child.wait_for(marker, process)
    code, stderr = cli("--config", run_config, *FAST)
    line = error_line(stderr)
    assert code == 2 and f"pid {process.pid} on host {socket.gethostname()}" in line
    assert "in use by another llmc run" in line and "save.save_path" in line
    assert (save / ".llmc" / "lock").exists() and len(os.listdir(save / ".llmc" / "runs")) == 1

    process.kill()  # its lock is now stale: the next run reports it and takes it over
    process.join()
    code, stderr = cli("--config", run_config, *FAST)
    assert code == 0, stderr
    assert f"taking over the stale lock of pid {process.pid}" in stderr
    committed(save)
    assert_clean(save)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_the_run_removes_its_staging_and_keeps_the_previous_outputs(
        cli, run_config, tmp_path, signum, code):
    save = tmp_path / "save"
    assert cli("--config", run_config, *FAST, *seed(1))[0] == 0
    previous = committed(save)
    env, marker = pause_env(tmp_path, "save:model-written")
    process, stderr = start_child(run_config, tmp_path, *FAST, *seed(2), *OVERWRITE, env=env)
    llmc_child.wait_for(marker, process)
    os.kill(process.pid, signum)
    process.join(30)
    assert process.exitcode == code
    text = stderr.read_text()
    assert "Traceback" not in text and "llmc: error" not in text
    assert [line for line in text.splitlines() if line.startswith("llmc: ")] == \
        [f"llmc: interrupted ({signal.Signals(signum).name})"]
    assert committed(save)["run_id"] == previous["run_id"]
    assert_clean(save)  # at once: the run cleaned up itself


# (the previous run, the new run) of each scenario: the first loses plan.png on commit, the
# second gains plan.png and transformed_model/.
SCENARIOS = {
    "drops-plan": ((*OWL, *seed(1)), (*seed(2), *OVERWRITE)),
    "adds-plan-and-model": ((*NO_MODEL, *seed(1)), (*OWL, *seed(2), *OVERWRITE)),
}
KILLS = [  # (scenario, instant, whose outputs a reader must see after the kill)
    ("drops-plan", "save:model-written", "previous"),
    ("drops-plan", "commit:before-switch", "previous"),
    ("drops-plan", "commit:after-switch", "new"),
    ("drops-plan", "commit:links-pruned", "new"),
    ("drops-plan", "commit:old-removed", "new"),
    ("adds-plan-and-model", "save:plan-written", "previous"),
    ("adds-plan-and-model", "commit:links-made", "previous"),  # new links dangle: no new names
    ("adds-plan-and-model", "commit:before-switch", "previous"),
    ("adds-plan-and-model", "commit:after-switch", "new"),
]


@pytest.mark.parametrize("scenario,point,survivor", KILLS)
def test_sigkill_at_each_instant_of_the_save_leaves_one_complete_run(
        cli, run_config, tmp_path, scenario, point, survivor):
    save = tmp_path / "save"
    previous_args, new_args = SCENARIOS[scenario]
    assert cli("--config", run_config, *FAST, *previous_args)[0] == 0
    previous = committed(save)

    env, marker = pause_env(tmp_path, point)
    process, _ = start_child(run_config, tmp_path, *FAST, *new_args, env=env)
    llmc_child.wait_for(marker, process)
    process.kill()
    process.join()
    seen = committed(save)
    assert seen["config"]["base"]["seed"] == (1 if survivor == "previous" else 2)
    if survivor == "previous":
        assert seen["run_id"] == previous["run_id"]

    # The next run on the path removes what the killed one left (its lock, an uncommitted run
    # directory or the previous run's, dangling links), then refuses: outputs exist.
    code, stderr = cli("--config", run_config, *FAST, *seed(3))
    assert code == 2 and "already exists" in error_line(stderr)
    assert committed(save)["run_id"] == seen["run_id"]
    assert_clean(save)


def test_sigkill_at_random_file_operations_of_the_save(cli, run_config, tmp_path):
    """Kill -9 right before the k-th file-system operation after the save began, k random
    (the seed is in the failure message), then check the invariant and that a rerun commits."""
    rng_seed = random.randrange(1 << 30)
    rng = random.Random(rng_seed)
    save = tmp_path / "save"
    assert cli("--config", run_config, *FAST, *OWL, *seed(1))[0] == 0
    for k in sorted(rng.sample(range(1, 70), 3)):  # a save is ~60 operations today
        process, _ = start_child(run_config, tmp_path, *FAST, *seed(2), *OVERWRITE,
                                 kill_at_op=k)
        process.join()
        assert process.exitcode in (0, -signal.SIGKILL), (rng_seed, k, process.exitcode)
        seen = committed(save)
        assert seen["config"]["base"]["seed"] in (1, 2), (rng_seed, k)
        code, stderr = cli("--config", run_config, *FAST, *seed(1), *OVERWRITE)
        assert code == 0, (rng_seed, k, stderr)
        assert committed(save)["config"]["base"]["seed"] == 1
        assert_clean(save)
