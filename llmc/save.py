"""Outputs: the transformed model as a Hugging Face directory, results.json, the resolved config.

Everything is written to a temporary name and renamed into place, and nothing that exists is
replaced unless `save.overwrite: True`; the check runs before any heavy work.
"""
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from loguru import logger

from .errors import LlmcError
from .files import write_text
from .strict_json import dumps_strict

MODEL_DIR = "transformed_model"
RESULTS = "results.json"
CONFIG = "config.yml"
PLAN_PLOT = "plan.png"  # written for per-unit plans (OWL, MixGPT) when matplotlib is installed


def outputs(save_cfg):
    root = Path(save_cfg.save_path).expanduser()
    names = [RESULTS, CONFIG, PLAN_PLOT] + ([MODEL_DIR] if save_cfg.save_trans else [])
    return root, [root / name for name in names]


def check_save_path(save_cfg) -> None:
    root, paths = outputs(save_cfg)
    if root.exists() and not root.is_dir():
        raise LlmcError(f"save.save_path '{root}' is a file, not a directory; choose another path")
    existing = [p for p in paths if p.exists()]
    if existing and not save_cfg.overwrite:
        raise LlmcError(f"'{existing[0]}' already exists; choose another save.save_path or set "
                        "save.overwrite: True to replace it")


def _replace(tmp: Path, final: Path) -> None:
    """Move `tmp` to `final`; an existing `final` is removed only after the move succeeded."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def save_model(model, tokenizer, save_path) -> Path:
    root = Path(save_path).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR}.tmp-", dir=root))
    try:
        model.to("cpu")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _replace(tmp, root / MODEL_DIR)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"saved the transformed model to {root / MODEL_DIR}")
    return root / MODEL_DIR


def write_results(save_path, results: dict, config: dict) -> Path:
    root = Path(save_path).expanduser()
    write_text(root / CONFIG, yaml.safe_dump(config, sort_keys=False))
    write_text(root / RESULTS, dumps_strict(results))
    logger.info(f"wrote {root / RESULTS}")
    return root / RESULTS
