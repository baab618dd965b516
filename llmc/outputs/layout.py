"""The names under `save.save_path` (docs/outputs.md draws the tree and says why each exists).

    save_path/results.json etc.   -> .llmc/current/<name>  relative symlinks, what users read
    save_path/sensitivity.json       MixGPT's cache, a real file that outlives runs
    save_path/.llmc/lock             the run's exclusive lock (llmc.outputs.lock)
    save_path/.llmc/current          -> runs/<run id>: the commit point
    save_path/.llmc/runs/<run id>/   one directory per run; the staging area while it runs
    save_path/.llmc/scratch/         shards/, resume/, activations/: a streamed run's work
                                     (never cleaned here; removed after the commit)
"""
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..save import COLUMN_ORDERS, CONFIG, MODEL_DIR, PLAN_PLOT, RESULTS

# what a run commits, at these names
OUTPUT_NAMES = (RESULTS, CONFIG, PLAN_PLOT, COLUMN_ORDERS, MODEL_DIR)
STATE_DIR = ".llmc"
LEGACY_PREFIX = "legacy-"  # run directories holding outputs moved from the pre-.llmc layout
NEW_CURRENT_PREFIX = "current.new-"  # the fresh `current` link made beside the old one
STALE_LOCK_PREFIX = "lock.stale-"  # a stale lock renamed away while it is taken over
PROBE_PREFIX = ".llmc-probe-"  # the writability probe's file and link in save_path


def utc_stamp(seconds: Optional[float] = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def new_run_id() -> str:
    """UTC time and pid: sorts by start time and says which process wrote the run."""
    return f"{utc_stamp()}-{os.getpid()}"


@dataclass(frozen=True)
class Layout:
    root: Path  # save.save_path, expanded

    @classmethod
    def of(cls, save_path) -> "Layout":
        return cls(Path(save_path).expanduser().absolute())

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def lock(self) -> Path:
        return self.state / "lock"

    @property
    def current(self) -> Path:
        return self.state / "current"

    @property
    def runs(self) -> Path:
        return self.state / "runs"

    @property
    def scratch(self) -> Path:
        return self.state / "scratch"

    @property
    def shards(self) -> Path:
        """Where a streamed run writes each finished block (llmc.models.stream)."""
        return self.scratch / "shards"

    @property
    def resume(self) -> Path:
        """A streamed run's resume state (llmc.runner.resume)."""
        return self.scratch / "resume"

    @property
    def activations(self) -> Path:
        """base.offload_activations: disk's memory-mapped file (llmc.runner.activations)."""
        return self.scratch / "activations"

    @property
    def scratch_dirs(self) -> tuple:
        return (self.shards, self.resume, self.activations)

    @staticmethod
    def current_target(run_id: str) -> str:
        """What `current` holds for run `run_id` (relative, so the tree can be moved)."""
        return f"runs/{run_id}"

    @staticmethod
    def link_target(name: str) -> str:
        """What the top-level link `name` holds."""
        return f"{STATE_DIR}/current/{name}"

    def current_run(self) -> Optional[Path]:
        """The committed run's directory, or None when nothing was committed in this layout."""
        try:
            target = os.readlink(self.current)
        except FileNotFoundError:
            return None
        return self.state / target

    def is_our_link(self, name: str) -> bool:
        path = self.root / name
        return path.is_symlink() and os.readlink(path) == self.link_target(name)

    def legacy_outputs(self) -> list:
        """Top-level outputs that are not this layout's links: real files and directories left
        by an llmc before the .llmc layout (or anything else at an output's name)."""
        return [name for name in OUTPUT_NAMES
                if os.path.lexists(self.root / name) and not self.is_our_link(name)]

    def committed_outputs(self) -> list:
        """Paths a reader of save_path sees as outputs now (links that resolve, legacy entries)."""
        return [self.root / name for name in OUTPUT_NAMES if (self.root / name).exists()
                or name in self.legacy_outputs()]
