"""Small file helpers shared by the outputs (llmc.save) and the caches (llmc.runner.cache)."""
import os
import tempfile
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and one rename,
    so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as f:
        f.write(text)
    os.replace(f.name, path)
