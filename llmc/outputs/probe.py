"""Proof, before any heavy work, that a save path can hold a run's outputs: every problem the
OS reports about it (permissions, a path under a file, a read-only or special filesystem, a full
disk, no symlinks) becomes one LlmcError naming save.save_path, the reason and the fix."""
import contextlib
import errno
import os
import secrets

from ..errors import LlmcError
from .layout import PROBE_PREFIX, Layout

FIX = "choose a directory you can write to"


def reason(err: OSError) -> str:
    text = err.strerror or str(err)
    where = err.filename if err.filename is not None else None
    return f"{text}: '{where}'" if where else text


@contextlib.contextmanager
def os_errors_name_the_save_path(layout: Layout):
    """Turn an OSError raised in the block into the save path's LlmcError."""
    try:
        yield
    except OSError as err:
        raise LlmcError(f"save.save_path '{layout.root}' cannot hold the outputs "
                        f"({reason(err)}); {FIX}") from None


def make_save_path(layout: Layout) -> list:
    """Make save_path (with its parents) and .llmc; returns the directories this made, deepest
    first, so a run that commits nothing can remove them again (remove_if_empty)."""
    if layout.root.exists() and not layout.root.is_dir():
        raise LlmcError(f"save.save_path '{layout.root}' is a file, not a directory; choose "
                        "another path")
    made = [path for path in (layout.root, *layout.root.parents) if not os.path.lexists(path)]
    with os_errors_name_the_save_path(layout):
        layout.root.mkdir(parents=True, exist_ok=True)
        layout.state.mkdir(exist_ok=True)
    return [layout.runs, layout.state, *made]


def remove_if_empty(directories) -> None:
    """rmdir each directory, deepest first, stopping at the first that is not empty (or gone,
    or not ours to remove): a refused or failed run leaves no empty save path behind."""
    for path in directories:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError:
            return


def prove_writable(layout: Layout) -> None:
    """Create, write, fsync and remove a file in save_path itself, and make one symlink there
    (the layout's commit point is a symlink: a filesystem without them cannot hold it)."""
    probe = layout.root / f"{PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    link = probe.with_name(probe.name + ".link")
    with os_errors_name_the_save_path(layout):
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                os.write(fd, b"llmc writability probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.symlink(probe.name, link)
            except OSError as err:
                if err.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise LlmcError(
                        f"save.save_path '{layout.root}' is on a filesystem without symbolic "
                        f"links ({reason(err)}), which the output layout needs "
                        f"(docs/outputs.md); {FIX}") from None
                raise
        finally:
            for path in (link, probe):
                if os.path.lexists(path):
                    os.unlink(path)
