"""Where and with what a run ran: the record that lets a result be reproduced or explained.

Everything here is cheap and never fails a run: a fact that cannot be found (no git, a package not
installed) is recorded as null.
"""
import datetime
import platform
import subprocess
import threading
from importlib import metadata
from pathlib import Path
from typing import Optional

# The packages whose versions change results or outputs: kernels (torch), modeling code
# (transformers), tokenizing (tokenizers), weight files (safetensors), loading (accelerate),
# samplers' RNG (numpy), datasets' readers.
PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "numpy",
            "datasets")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict:
    """{package: version or None when not installed}, llmc and python first."""
    from . import __version__

    found = {"llmc": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _git(source: Path, *args) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(source: Optional[Path] = None) -> Optional[dict]:
    """{commit, dirty} of the checkout llmc runs from, or None when it is not one (an installed
    wheel). dirty: tracked files differ from the commit (untracked files do not count: a save
    directory inside the checkout must not make every run dirty)."""
    source = source or Path(__file__).resolve().parent
    # Only llmc's own checkout: an installed copy may sit inside another repository (a venv in a
    # project), whose commit says nothing about llmc's code.
    if _git(source, "ls-files", "--error-unmatch", Path(__file__).name) is None:
        return None
    commit = _git(source, "rev-parse", "HEAD")
    if not commit:
        return None
    changes = _git(source, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def device_name(device) -> str:
    """The resolved device, with the accelerator's model where there is one."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()})"


def run_record(device) -> dict:
    """Where and when this run ran, for results.json's `run` (its software: versions())."""
    return {"started_utc": utc_now(), "device": device_name(device),
            "platform": platform.platform(), "git": git_state()}


class InBackground:
    """`compute()` run on a daemon thread, for a record that only reads files (the input
    model's sha256s: minutes of reading for a 70B checkpoint, off the run's critical path; a
    daemon thread never holds up an interrupted run's exit). result() waits for it; a failure
    (a file that vanished) is recorded, not raised: the record must not fail a run."""

    def __init__(self, compute):
        self._value = None
        self._thread = threading.Thread(target=self._run, args=(compute,), daemon=True)
        self._thread.start()

    def _run(self, compute):
        try:
            self._value = compute()
        except OSError as err:
            self._value = {"error": f"{type(err).__name__}: {err}"}

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self):
        self._thread.join()
        return self._value
