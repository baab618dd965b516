"""The input model's fingerprint for the reproducibility record: the sha256 of each weight file
transformers reads (and of the shard index), streamed in 1 MiB chunks, plus one combined
sha256 over them. Two runs on the same checkpoint files get the same fingerprint."""
import hashlib
from pathlib import Path
from typing import Dict, Optional

from ..assets import sha256_of
from .weight_files import WeightFiles, find_weight_files


def fingerprint_files(root: Path, weights: WeightFiles) -> Dict[str, object]:
    """{"files": {file name: sha256}, "sha256": combined} of `weights` (files under `root`).
    The combined hash covers the sorted "name sha256" lines, so it changes with any file's
    content or name."""
    files = {str(Path(file).relative_to(root)): sha256_of(file) for file in weights.all}
    combined = hashlib.sha256("".join(f"{name} {digest}\n" for name, digest
                                      in sorted(files.items())).encode())
    return {"files": files, "sha256": combined.hexdigest()}


def model_fingerprint(path, shown: Optional[str] = None) -> Dict[str, object]:
    """fingerprint_files of the checkpoint directory `path` (model.path `shown`, for
    messages): the files transformers would read from it."""
    path = Path(path)
    return fingerprint_files(path, find_weight_files(path, shown or str(path)))
