"""Outputs of one run, written into its staging directory (llmc.outputs gives the directory and
commits it): the transformed model as a Hugging Face directory, results.json, the resolved config.
"""
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from loguru import logger

from .faults import pause_point
from .files import give_plain_modes, write_text
from .strict_json import dumps_strict

MODEL_DIR = "transformed_model"
RESULTS = "results.json"
# results.json's layout version (its `schema` key; absent in the first layout, read as 1): 2 added
# `tasks` (accuracy per position and task). `llmc report` reads every version.
RESULTS_SCHEMA = 2
CONFIG = "config.yml"
PLAN_PLOT = "plan.png"  # written for per-unit plans (OWL, MixGPT) when matplotlib is installed
# {Linear path: int64 column order} where a mask is N:M in a permuted order (RIA reallocation)
COLUMN_ORDERS = "column_orders.safetensors"


def save_model(handle, tokenizer, directory) -> Path:
    """Write `handle`'s model (a ModelHandle: in memory, or streamed with its blocks already on
    disk) and `tokenizer` to directory/transformed_model (which must not exist)."""
    path = Path(directory).expanduser() / MODEL_DIR
    path.mkdir(parents=True)
    handle.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    give_plain_modes(path)  # safetensors writes its file 0600
    logger.info(f"saved the transformed model to {path}")
    pause_point("save:model-written")
    return path


def save_tokenizer(tokenizer, path: Path) -> None:
    """tokenizer.save_pretrained(path); the fast tokenizer's Rust side takes only UTF-8 paths,
    so a path holding bytes that are not UTF-8 (a Latin-1 name, or any non-ASCII name under
    LC_ALL=C without Python's UTF-8 mode) gets the files through a temporary directory."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for name in sorted(os.listdir(tmp)):
                shutil.move(os.path.join(tmp, name), path / name)
        return
    tokenizer.save_pretrained(path)


def save_column_orders(column_orders, directory) -> Path:
    """The column orders beside the model: W[:, order] of each listed Linear is N:M."""
    from .models.safetensors_io import write_tensors
    path = Path(directory).expanduser() / COLUMN_ORDERS
    write_tensors(path, sorted(column_orders.items()))
    logger.info(f"saved {len(column_orders)} column orders to {path} (each listed Linear's "
                "weight is N:M in its columns taken in that order)")
    return path


def write_results(directory, results: dict, config: dict) -> Path:
    root = Path(directory).expanduser()
    write_text(root / CONFIG, yaml.safe_dump(config, sort_keys=False))
    pause_point("save:config-written")
    write_text(root / RESULTS, dumps_strict(results))
    pause_point("save:results-written")
    return root / RESULTS
