"""A run's staging directory and its one commit point.

A run writes every output into `.llmc/runs/<run id>/`; nothing at the top level changes while it
runs. The commit then makes the top-level links for the names this run has (they dangle until
the switch, as the previous run lacked them), replaces `.llmc/current` by a fresh link to the new
run with one rename, and only then removes the links the new run lacks and the previous run's
directory. A process killed at any instant therefore leaves, to every reader that follows the
top-level names, either the previous run's outputs or the new run's, never a mix; what it leaves
besides (an uncommitted run directory, a dangling link) the next run removes at its start.
"""
import os
import shutil
from pathlib import Path
from typing import Optional

from loguru import logger

from ..errors import LlmcError
from ..faults import pause_point
from ..files import fsync_dir, fsync_tree
from .layout import NEW_CURRENT_PREFIX, OUTPUT_NAMES, Layout, new_run_id


def switch_current(layout: Layout, run_id: str, point: Optional[str] = None) -> None:
    """Point `.llmc/current` at runs/<run id> with one rename (the commit point); `point`: the
    fault-injection point between making the fresh link and the rename."""
    fresh = layout.state / f"{NEW_CURRENT_PREFIX}{run_id}"
    if os.path.lexists(fresh):
        os.unlink(fresh)
    os.symlink(layout.current_target(run_id), fresh)
    if point:
        pause_point(point)
    os.replace(fresh, layout.current)
    fsync_dir(layout.state)


def make_link(layout: Layout, name: str) -> None:
    """The top-level link save_path/<name> -> .llmc/current/<name>, made once and then left."""
    if not layout.is_our_link(name):
        os.symlink(layout.link_target(name), layout.root / name)


def remove_dangling_links(layout: Layout) -> None:
    """Remove the top-level links that lead nowhere: names the committed run lacks."""
    for name in OUTPUT_NAMES:
        if layout.is_our_link(name) and not (layout.root / name).exists():
            os.unlink(layout.root / name)


class StagedRun:
    """One run's outputs, staged in `dir` until `commit`."""

    def __init__(self, layout: Layout, lock):
        self.layout = layout
        self.lock = lock
        layout.runs.mkdir(exist_ok=True)
        base = new_run_id()
        for attempt in range(1, 1000):  # two runs of one process may start in one second
            run_id = base if attempt == 1 else f"{base}.{attempt}"
            try:
                (layout.runs / run_id).mkdir()
                break
            except FileExistsError:
                continue
        self.run_id = run_id
        self.dir: Path = layout.runs / run_id

    @property
    def root(self) -> Path:
        return self.layout.root

    def is_committed(self) -> bool:
        """Read from the disk, not from a flag: a signal may land between the switch and any
        assignment recording it."""
        try:
            return os.readlink(self.layout.current) == self.layout.current_target(self.run_id)
        except OSError:
            return False

    def commit(self) -> None:
        layout = self.layout
        if not self.lock.still_ours():
            raise LlmcError(f"the lock on save.save_path '{layout.root}' was taken by "
                            f"{self.lock.holder()} during this run, so this run's outputs were "
                            "not committed; run again once that run has finished")
        names = [name for name in OUTPUT_NAMES if os.path.lexists(self.dir / name)]
        fsync_tree(self.dir)
        fsync_dir(layout.runs)
        previous = layout.current_run()
        for name in names:
            make_link(layout, name)
        fsync_dir(layout.root)
        pause_point("commit:links-made")

        switch_current(layout, self.run_id, "commit:before-switch")
        pause_point("commit:after-switch")

        for name in OUTPUT_NAMES:
            if name not in names and layout.is_our_link(name):
                os.unlink(layout.root / name)
        fsync_dir(layout.root)
        pause_point("commit:links-pruned")
        if previous is not None and previous != self.dir and previous.exists():
            shutil.rmtree(previous)
            fsync_dir(layout.runs)
        pause_point("commit:old-removed")
        logger.info(f"committed run {self.run_id} to {layout.root}: {', '.join(names)}")

    def discard(self) -> None:
        """Remove what a run that did not commit made (its staging directory, its fresh
        `current` link, top-level links that lead nowhere); the previous outputs stay as they
        were. Best effort: what a failure here leaves, the next run's start removes."""
        if self.is_committed():
            return
        layout = self.layout
        try:
            fresh = layout.state / f"{NEW_CURRENT_PREFIX}{self.run_id}"
            if os.path.lexists(fresh):
                os.unlink(fresh)
            remove_dangling_links(layout)
            if self.dir.exists():
                shutil.rmtree(self.dir)
                logger.info(f"removed the uncommitted outputs of run {self.run_id}")
        except OSError as err:
            logger.warning(f"could not remove the uncommitted outputs of run {self.run_id} "
                           f"({err}); the next run on {layout.root} removes them")
