"""Runs of the CLI in real child processes, for the tests that signal or kill a run
(test_outputs.py). The children are forked from a multiprocessing forkserver that imported llmc,
torch and transformers once, so each run starts in a fraction of a second instead of paying an
interpreter start and those imports every time (the forkserver itself never runs torch, so
forking it is safe).

Not a test module: the forkserver imports it by name to find `run_cli`.
"""
import builtins
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
import time

import datasets  # noqa: F401  (preloaded by the forkserver: the modules a run imports)
import matplotlib
import torch
import tqdm
import transformers.models.llama.modeling_llama  # noqa: F401

matplotlib.use("Agg")  # as llmc.plot does, before pyplot
import matplotlib.pyplot  # noqa: E402,F401

import llmc.cli
import llmc.stages

_forkserver = None


def forkserver():
    """The multiprocessing context whose children run `run_cli`."""
    global _forkserver
    if _forkserver is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        # The forkserver imports the preloaded modules before it applies this process's
        # sys.path (Python 3.11), so it gets the path through PYTHONPATH: the same llmc (this
        # checkout) and this module. One OpenMP thread, for it and so for every child.
        settings = {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                    "OMP_NUM_THREADS": "1"}
        saved = {key: os.environ.get(key) for key in settings}
        os.environ.update(settings)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            for key, value in saved.items():
                if value is None:
                    del os.environ[key]
                else:
                    os.environ[key] = value
        _forkserver = context
    return _forkserver


def _kill_self_at_op(n: int) -> None:
    """From now on, SIGKILL this process right before its n-th file-system change (an
    os.open/mkdir/rename/replace/symlink/unlink/rmdir/fsync call, or an open() for writing):
    a kill at an arbitrary instant between two of the save's operations."""
    count = [0]

    def counted(function):
        def wrapper(*args, **kwargs):
            count[0] += 1
            if count[0] >= n:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return wrapper

    for name in ("open", "mkdir", "rename", "replace", "symlink", "unlink", "rmdir", "fsync"):
        setattr(os, name, counted(getattr(os, name)))
    plain_open = builtins.open
    counted_open = counted(plain_open)

    def open_(file, mode="r", *args, **kwargs):
        writes = any(c in mode for c in "wax+")
        return (counted_open if writes else plain_open)(file, mode, *args, **kwargs)

    builtins.open = open_


def run_cli(argv, env, stderr_path, kill_at_op=None):
    """The child: `llmc *argv` with `env` added, its stderr to `stderr_path`; exits with the
    CLI's code. With `kill_at_op`, the process SIGKILLs itself at that file-system operation
    counted from the start of the save (save_model)."""
    torch.set_num_threads(1)
    # As a `python -m llmc` started from a shell: SIGINT raises KeyboardInterrupt and nothing
    # blocks it. A forkserver child inherits the dispositions and signal mask the forkserver
    # was started with, which depend on what the test process was doing at that moment.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # tqdm's default lock is a multiprocessing semaphore; one left by a killed child makes the
    # resource tracker warn at exit. A thread lock serves one process as well.
    tqdm.tqdm.set_lock(threading.RLock())
    os.environ.update(env)
    sys.stderr = open(stderr_path, "w", buffering=1)
    if kill_at_op is not None:
        save_model = llmc.stages.save_model  # what the run saves through (llmc.stages.save_pruned)

        def save_model_then_count(*args, **kwargs):
            _kill_self_at_op(kill_at_op)
            return save_model(*args, **kwargs)

        llmc.stages.save_model = save_model_then_count
    sys.exit(llmc.cli.main(argv))


def start(argv, env, stderr_path, kill_at_op=None):
    process = forkserver().Process(target=run_cli,
                                   args=(list(map(str, argv)), env, str(stderr_path), kill_at_op))
    process.start()
    return process


def wait_for(path, process, timeout=60.0) -> None:
    """Until file `path` exists; fails if `process` ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if not process.is_alive():
            raise AssertionError(f"the run ended (exit {process.exitcode}) before {path}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.01)
