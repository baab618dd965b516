"""Calibration and evaluation data: rows from a source, turned into token tensors.

Importing this package registers the datasets (DATASETS) and samplers (PREPROCS) that the
config names. The two entry points:
  calib_batches(cfg.calib, tokenizer) -> calibration batches, each a LongTensor (bs, T)
  eval_tokens(name, cfg.eval, tokenizer) -> one evaluation token stream, LongTensor (1, N)
and, for the record, token_ids_sha256(batches) / token_stream_sha256(tokens): digests of them.
"""
from typing import List

from loguru import logger

from ..errors import LlmcError
from ..registry import DATASETS, PREPROCS
from . import builtin_corpus, preproc, sources  # noqa: F401  (fills the registries)
from .builtin_corpus import builtin_split
from .preproc import encode
from .sources import DatasetSpec, HubSplit, load_local
from .token_hash import token_ids_sha256, token_stream_sha256

__all__ = ["calib_batches", "batches_from_rows", "eval_tokens", "batch_windows", "builtin_split", "load_local",
           "DatasetSpec", "HubSplit", "token_ids_sha256", "token_stream_sha256"]


def calib_batches(cfg, tokenizer) -> List:
    """Calibration windows drawn by `cfg.preproc` from `cfg.name`'s calibration rows (hub,
    local `cfg.path`, or the built-in corpus), grouped into batches of `cfg.bs` windows."""
    spec = DATASETS.lookup(cfg.name, "calib.name")
    rows = spec.calib_rows(cfg.download, cfg.path)
    return batches_from_rows(cfg, tokenizer, rows, spec.key, f"'{cfg.name}'")


def batches_from_rows(cfg, tokenizer, rows, key: str, source: str) -> List:
    """calib_batches from `rows` (a datasets.Dataset whose column `key` holds the text; `source`
    names them in the log): the windows `cfg.preproc` draws, in batches of `cfg.bs`."""
    sampler = PREPROCS.lookup(cfg.preproc, "calib.preproc")
    windows = sampler(rows, tokenizer, cfg.n_samples, cfg.seq_len, cfg.seed, key)
    check_windows(windows, cfg, sampler.variable_length)
    batches = batch_windows(windows, cfg.bs)
    lengths = sorted({w.shape[1] for w in windows})
    length_text = (f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}..{lengths[-1]}")
    logger.info(f"calibration: {len(windows)} windows of {length_text} tokens "
                f"({sum(w.shape[1] for w in windows)} tokens) from {source} by "
                f"{cfg.preproc}, in {len(batches)} batches")
    return batches


def check_windows(windows, cfg, variable_length: bool) -> None:
    """What the config asks for, or an LlmcError: calib.n_samples windows of calib.seq_len tokens
    (1..seq_len for a variable-length sampler). Every sampler raises before it falls short;
    this makes sure that a short result can never reach the pruning unnoticed."""
    if len(windows) != cfg.n_samples:
        raise LlmcError(f"preproc '{cfg.preproc}' made {len(windows)} calibration windows, not "
                        f"calib.n_samples={cfg.n_samples}")
    for index, window in enumerate(windows):
        length = window.shape[-1] if window.dim() == 2 and window.shape[0] == 1 else None
        fits = (length is not None and 1 <= length <= cfg.seq_len if variable_length
                else length == cfg.seq_len)
        if not fits:
            raise LlmcError(f"preproc '{cfg.preproc}' made calibration window {index} of shape "
                            f"{tuple(window.shape)}, not (1, {'1..' if variable_length else ''}"
                            f"calib.seq_len={cfg.seq_len})")


def batch_windows(windows, bs: int) -> List:
    """bs 1: each window alone; bs k > 1: consecutive groups of k stacked on dim 0 (the last
    group may be smaller); bs -1: all windows in one batch."""
    import torch

    if bs == 0 or bs < -1:
        raise LlmcError(f"calib.bs must be -1 (one batch) or >= 1, got {bs}")
    size = len(windows) if bs == -1 else bs
    batches = []
    for begin in range(0, len(windows), max(size, 1)):
        group = windows[begin:begin + size]
        lengths = sorted({w.shape[1] for w in group})
        if len(lengths) > 1:
            raise LlmcError(f"calib.bs: {bs} puts windows of different lengths ({lengths}) in "
                            "one batch; use calib.bs: 1 or a preproc with fixed-length windows")
        batches.append(torch.cat(group, dim=0))
    return batches


def eval_tokens(name: str, cfg, tokenizer):
    """The evaluation token stream of dataset `name`, built as the reference eval code builds
    it: wikitext2 and builtin rows joined with '\\n\\n', ptb with ' ', c4 the first 1100
    validation rows joined with ' ' and cut to 256 * seq_len tokens."""
    spec = DATASETS.lookup(name, "eval.name")
    rows = spec.eval_rows(cfg.download, cfg.path_for(name))
    texts = rows[:spec.eval_max_rows][spec.key] if spec.eval_max_rows else rows[spec.key]
    tokens = encode(tokenizer, spec.eval_join.join(texts))
    if spec.eval_max_windows:
        tokens = tokens[:, :spec.eval_max_windows * cfg.seq_len]
    if tokens.shape[1] < cfg.seq_len:
        raise LlmcError(f"the '{name}' evaluation text is only {tokens.shape[1]} tokens long, "
                        f"shorter than one window of eval.seq_len={cfg.seq_len}; lower "
                        "eval.seq_len or evaluate on more text")
    logger.info(f"evaluation '{name}': {tokens.shape[1]} tokens "
                f"({tokens.shape[1] // cfg.seq_len} windows of {cfg.seq_len})")
    return tokens
