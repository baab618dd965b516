"""Small file helpers shared by the outputs (llmc.save, llmc.outputs) and the caches
(llmc.runner.cache, the built-in model cache).

Everything here creates files and directories the way a plain `open` / `mkdir` does, so they get
0666 / 0777 masked by the umask: the temp-file helpers of `tempfile` use 0600 / 0700, which would
leave outputs that other users of a shared machine cannot read.
"""
import os
import secrets
import time
from pathlib import Path
from typing import Optional


def timed_fsync(fd, timing: Optional[dict] = None) -> None:
    """os.fsync(fd), its seconds added to timing["fsync"] when a dict is given (the resume
    checkpoint reports how much of its cost is waiting for the disk)."""
    start = time.perf_counter()
    os.fsync(fd)
    if timing is not None:
        timing["fsync"] = timing.get("fsync", 0.0) + time.perf_counter() - start


def write_text(path: Path, text: str, timing: Optional[dict] = None) -> None:
    """Write `text` to `path` through a temporary file in the same directory, fsync it, and one
    rename, so a reader never sees half a file (the temporary is named `.<name>.<random>`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        # UTF-8 whatever the locale (LC_ALL=C); a file name's undecodable bytes as they were
        with open(fd, "w", closefd=True, encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
            f.flush()
            timed_fsync(f.fileno(), timing)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_unique_dir(parent, prefix: str) -> Path:
    """A new directory `parent/<prefix><random>` with a plain directory's mode (what
    tempfile.mkdtemp does, minus its 0700)."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for {prefix}* in {parent}")


def fsync_dir(path, timing: Optional[dict] = None) -> None:
    """Make the entries of directory `path` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        timed_fsync(fd, timing)
    finally:
        os.close(fd)


def fsync_tree(root) -> None:
    """fsync every file and directory under `root` (not following symlinks), `root` included."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, since setting it to read it is a
    race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_plain_modes(root) -> None:
    """Give every file under `root` 0666 and every directory 0777 (root included), masked by the
    umask: what writers such as safetensors leave at 0600 (they write through a temp file)."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, names in os.walk(root):
        for name in dirs:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def create_file_here(path: Path):
    """Open a new file at `path` for writing, never through a link: whatever is at that name
    (a leftover, a link) is unlinked first, and the file is created with O_EXCL|O_NOFOLLOW."""
    if os.path.lexists(path):
        os.unlink(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    return os.fdopen(fd, "wb")
