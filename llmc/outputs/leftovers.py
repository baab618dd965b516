"""What a run finds at its start (holding the lock) and puts right before it begins: what killed
runs left, and the outputs of an llmc from before the .llmc layout. Never touched: the committed
run, `.llmc/scratch/` (resume state) and MixGPT's `sensitivity.json`."""
import os
import shutil

from loguru import logger

from ..errors import LlmcError
from ..files import fsync_dir
from ..save import MODEL_DIR
from .commit import make_link, remove_dangling_links, switch_current
from .layout import (LEGACY_PREFIX, NEW_CURRENT_PREFIX, OUTPUT_NAMES, PROBE_PREFIX,
                     STALE_LOCK_PREFIX, Layout, utc_stamp)

# Temporary names of the layout before .llmc, and of llmc.files.write_text (the cache's writes).
OLD_MODEL_TMP = f".{MODEL_DIR}.tmp-"
OLD_MODEL_ASIDE = f".{MODEL_DIR}.old-"  # the previous model, moved aside while replaced
TOP_LEVEL_TEMPORARIES = (OLD_MODEL_TMP, ".results.json.", ".config.yml.", ".plan.png.",
                         ".sensitivity.json.", PROBE_PREFIX)


def _remove(path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def clean_leftovers(layout: Layout) -> None:
    _clean_state(layout)
    _clean_runs(layout)
    _restore_or_remove_old_model(layout)
    for entry in sorted(os.listdir(layout.root)):
        if entry.startswith(TOP_LEVEL_TEMPORARIES):
            logger.warning(f"removing {layout.root / entry}, left by a run that was killed")
            _remove(layout.root / entry)
    _repair_links(layout)
    fsync_dir(layout.root)


def _clean_state(layout: Layout) -> None:
    for entry in sorted(os.listdir(layout.state)):
        if entry.startswith(NEW_CURRENT_PREFIX) or (entry.startswith(STALE_LOCK_PREFIX)
                                                    and not _taker_alive(entry)):
            os.unlink(layout.state / entry)
    current = layout.current_run()
    if current is not None and not current.is_dir():
        logger.warning(f"{layout.current} names {current}, which is gone; forgetting it")
        os.unlink(layout.current)


def _taker_alive(entry: str) -> bool:
    """Whether the run that renamed a stale lock to `entry` (lock.stale-<pid>-<random>) may
    still be checking it (it removes it itself a moment later)."""
    pid = entry[len(STALE_LOCK_PREFIX):].split("-")[0]
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    return True


def _clean_runs(layout: Layout) -> None:
    if not layout.runs.is_dir():
        return
    current = layout.current_run()
    for entry in sorted(os.listdir(layout.runs)):
        path = layout.runs / entry
        if path != current:
            logger.warning(f"removing {path}: the outputs of a run that did not commit (it was "
                           "killed or failed)")
            _remove(path)
    fsync_dir(layout.runs)


def _restore_or_remove_old_model(layout: Layout) -> None:
    """An llmc before .llmc killed between its two renames left no transformed_model/ and the
    previous one at .transformed_model.old-<pid>, beside that previous run's results: put it
    back. Any other such directory is a copy that was being deleted."""
    aside = sorted((layout.root / entry for entry in os.listdir(layout.root)
                    if entry.startswith(OLD_MODEL_ASIDE)), key=lambda p: p.stat().st_mtime)
    if aside and not os.path.lexists(layout.root / MODEL_DIR) and layout.current_run() is None:
        restored = aside.pop()
        logger.warning(f"restoring {restored} to {layout.root / MODEL_DIR} (an earlier llmc was "
                       "killed while replacing it)")
        os.rename(restored, layout.root / MODEL_DIR)
    for path in aside:
        logger.warning(f"removing {path}, left by a run that was killed")
        _remove(path)


def _repair_links(layout: Layout) -> None:
    """Remove top-level links that lead nowhere (names the committed run lacks: a kill during a
    commit), and make the missing links to names it has (a kill while adopting old outputs)."""
    remove_dangling_links(layout)
    current = layout.current_run()
    for name in OUTPUT_NAMES:
        path = layout.root / name
        if current is not None and not os.path.lexists(path) \
                and os.path.lexists(current / name):
            logger.info(f"linking {path} to the committed run's {name}")
            make_link(layout, name)


def check_existing(layout: Layout, overwrite: bool) -> None:
    existing = layout.committed_outputs()
    if existing and not overwrite:
        raise LlmcError(f"'{existing[0]}' already exists; choose another save.save_path or set "
                        "save.overwrite: True to replace it")


def adopt_legacy_outputs(layout: Layout) -> None:
    """Move the real output files of an llmc before .llmc into a run directory that `current`
    names, so this run's commit replaces them like any previous run (only with save.overwrite).

    Order, so a kill at any instant loses nothing: the run directory is made and `current`
    pointed at it first; then each entry is renamed into it and its link made. A kill leaves
    each entry either at the top level or in the directory, and the next run's start links the
    moved ones (_repair_links) and adopts the rest into the same directory."""
    names = layout.legacy_outputs()
    if not names:
        return
    current = layout.current_run()
    if current is None:
        current = layout.runs / f"{LEGACY_PREFIX}{utc_stamp()}"
        layout.runs.mkdir(exist_ok=True)
        current.mkdir()
        fsync_dir(layout.runs)
        switch_current(layout, current.name)
    mixed = [name for name in names if os.path.lexists(current / name)]
    if not current.name.startswith(LEGACY_PREFIX) or mixed:
        raise LlmcError(f"save.save_path '{layout.root}' holds {', '.join(names)} as plain "
                        f"files beside the outputs of run {current.name} (an older llmc wrote "
                        "into it); move those files away, or choose another save.save_path")
    for name in names:
        os.rename(layout.root / name, current / name)
        make_link(layout, name)
    fsync_dir(current)
    fsync_dir(layout.root)
    logger.warning(f"moved {', '.join(names)} (written by an llmc before the .llmc layout) into "
                   f"{current}; this run's commit replaces them")
