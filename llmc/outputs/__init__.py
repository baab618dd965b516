"""The save path of a run: its lock, its checks before any heavy work, its staging directory and
its one commit point. The layout is docs/outputs.md.

    with open_run(cfg.save) as out:   # lock, writability, leftovers, existing outputs
        ... write outputs into out.dir ...
        out.commit()                  # one rename makes them the save path's outputs

Leaving the block without a commit (an error, SIGINT/SIGTERM) removes out.dir and keeps the
previous outputs; the lock is released on every way out.
"""
import contextlib
import os

from ..errors import LlmcError
from ..faults import pause_point
from .commit import StagedRun
from .layout import OUTPUT_NAMES, Layout
from .links import check_layout, check_save_path_resolves
from .leftovers import adopt_legacy_outputs, check_existing, clean_leftovers
from .lock import LockFile
from .probe import (make_save_path, os_errors_name_the_save_path, prove_writable, reason,
                    remove_if_empty)

__all__ = ["open_run", "StagedRun", "Layout", "OUTPUT_NAMES"]


def _under(path, root) -> bool:
    try:
        return os.path.commonpath([os.path.abspath(path), str(root)]) == str(root)
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def open_run(save_cfg):
    """Yields the run's StagedRun once the save path is proven usable and locked."""
    layout = Layout.of(save_cfg.save_path)
    check_save_path_resolves(layout)
    check_layout(layout)  # no link out of .llmc/ is followed by anything below
    made = make_save_path(layout)
    lock = LockFile(layout)
    try:
        with os_errors_name_the_save_path(layout):
            lock.acquire()
    except LlmcError:
        remove_if_empty(made)
        raise
    try:
        prove_writable(layout)  # holding the lock: no other run's cleanup takes its probe file
        with os_errors_name_the_save_path(layout):
            clean_leftovers(layout)
            check_existing(layout, save_cfg.overwrite)
            if save_cfg.overwrite:
                adopt_legacy_outputs(layout)
            staged = StagedRun(layout, lock)
        try:
            pause_point("run:started")
            yield staged
        except OSError as err:
            if not _under(err.filename, layout.root):
                raise
            kept = ("this run's outputs were committed; the next run removes what is left"
                    if staged.is_committed() else "the previous outputs are kept")
            raise LlmcError(f"could not write the outputs to save.save_path '{layout.root}' "
                            f"({reason(err)}); {kept}; free space or choose another "
                            "save.save_path") from None
        finally:
            staged.discard()
    finally:
        lock.release()
        remove_if_empty(made)  # only what is still empty: nothing once a run has committed
