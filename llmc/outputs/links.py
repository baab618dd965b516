"""The rule that keeps a run inside its save path: llmc never deletes, renames or writes through
a symbolic link that could lead out of `save_path/.llmc/`.

Its own entries there are real directories and files (`.llmc` itself, `runs/`, every run
directory, `scratch/` and what is under it, `lock`); its one link, `current`, holds exactly
`runs/<run id>`. A layout that breaks this (a copy tool, a shared-directory setup or someone
else made a link) is refused before the run touches anything, with one line naming the link
and where it points. The top-level output names are links llmc makes; a foreign link there is
an output of another layout (llmc.outputs.leftovers) and is only ever renamed or unlinked as
a link, never followed. Checked at the start of every run (llmc.outputs.open_run)."""
import errno
import os
import re
from pathlib import Path

from ..errors import LlmcError
from .layout import Layout

CURRENT_TARGET = re.compile(r"runs/([^/]+)")


def _points(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _refuse_link(path: Path) -> None:
    raise LlmcError(f"{path} is a symbolic link to '{_points(path)}': llmc never deletes or "
                    "writes through a link in save.save_path/.llmc/ (docs/outputs.md); remove "
                    f"the link (rm '{path}'; what it points to stays) or choose another "
                    "save.save_path")


def check_save_path_resolves(layout: Layout) -> None:
    """save.save_path that is a dangling link or a loop of links: say so, not 'File exists'."""
    root = layout.root
    try:
        os.stat(root)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise LlmcError(f"save.save_path '{root}' is a loop of symbolic links; remove the "
                            "link or choose another save.save_path") from None
        if isinstance(err, FileNotFoundError) and root.is_symlink():
            raise LlmcError(f"save.save_path '{root}' is a symbolic link to '{_points(root)}', "
                            "which does not exist; create that directory, remove the link, or "
                            "choose another save.save_path") from None


def check_layout(layout: Layout) -> None:
    """Refuse a save path whose `.llmc/` holds a link where llmc keeps a real entry, or whose
    `current` points anywhere but at a run directory beside it; also a non-file lock."""
    for path in (layout.state, layout.runs, layout.scratch, layout.lock, *layout.scratch_dirs):
        if path.is_symlink():
            _refuse_link(path)
    for path in (layout.state, layout.runs, layout.scratch, *layout.scratch_dirs):
        if os.path.lexists(path) and not path.is_dir():
            raise LlmcError(f"{path} is a file, not the directory llmc keeps there "
                            "(docs/outputs.md); move it away or choose another save.save_path")
    if os.path.lexists(layout.lock) and not layout.lock.is_file():
        raise LlmcError(f"{layout.lock} is a directory or special file, not llmc's lock file; "
                        f"remove it (a run holding the save path has a regular file there) and "
                        "run again")
    if not os.path.lexists(layout.current):
        return
    if not layout.current.is_symlink():
        raise LlmcError(f"{layout.current} is not a link to a run directory (llmc makes it a "
                        "symbolic link 'runs/<run id>'); remove it and run again, or choose "
                        "another save.save_path")
    target = _points(layout.current)
    match = CURRENT_TARGET.fullmatch(target)
    if match is None or match.group(1) in (".", ".."):
        raise LlmcError(f"{layout.current} points to '{target}', outside {layout.runs}: llmc "
                        "would remove it as the previous run; make it point to a directory "
                        f"under runs/ (or remove it: rm '{layout.current}') or choose another "
                        "save.save_path")
    run_dir = layout.runs / match.group(1)
    if run_dir.is_symlink():
        _refuse_link(run_dir)
