"""llmc.prune: a model object (or a checkpoint's path) pruned in memory by one process, through
the same stages as the CLI (llmc.stages), so that its weights and record equal a CLI run's on
the same model, config and calibration data. It writes nothing unless the config's save section
asks (save.save_path or save.save_trans: the CLI's outputs there, committed the same way);
streaming, resume and torchrun stay the CLI's (docs/api.md)."""
import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from loguru import logger

from ..config.given import ConfigSource, Overrides, prune_config
from ..data import eval_tokens
from ..errors import ConfigError, LlmcError
from ..eval.tasks import TaskSuite
from ..models import load_model, load_tokenizer, preflight
from ..models.freed_memory import release_freed_memory
from ..models.preflight import check_token_ids
from ..outputs import open_run
from ..provenance import run_record, utc_now
from ..runner import resolve_device
from ..runner.device import current_rss, reset_peak_rss
from ..save import write_results
from ..sparse import build_method
from ..stages import (allocate_and_evaluate, evaluate_pruned, grids_to_pack, new_results,
                      prune_blocks, record_achieved, refuse_unpackable, save_pruned,
                      seed_everything)
from .caller_state import caller_state_kept
from .calibration import Calibration, calibration_batches
from .model_given import check_against_run, check_model_object, handle_of
from .result import Result


def prune(model, tokenizer=None, config: Optional[ConfigSource] = None, *,
          overrides: Overrides = None, calibration: Calibration = None) -> Result:
    """Prune `model` in place as `config` says and return it with the run's record.

    model: a transformers causal LM on the CPU or one GPU, any dtype (pruned in place, and left
        on its device), or the path of a checkpoint (loaded into memory as the CLI loads it).
    tokenizer: the model's tokenizer; needed to tokenize calibration texts, to evaluate and to
        save (loaded from the path when `model` is one).
    config: the path of a YAML file, a dict of sections as the YAML holds them, or an
        llmc.config.Config; validated as the CLI validates a file (model.path is not read for
        a model object). Evaluation runs only where the config sets eval.eval_pos, and the
        CLI's outputs (results.json, config.yml; the model with save.save_trans) are written
        only where it sets save.save_path or save.save_trans.
    overrides: {"sparse.weight.sparsity": 0.6, ...} (a string value is YAML text, as after
        `--set key=`) or a list of "key=value" strings, as `--set` takes them.
    calibration: a list of texts, a datasets.Dataset with a "text" column (both sampled by
        calib.preproc into calib.n_samples windows of calib.seq_len tokens), token ids (a 2-D
        tensor of windows, or a list of 1-D tensors, used as given), or None: the config's
        calib section.

    Raises LlmcError (ConfigError for the config) with the one-line message the CLI prints. The
    caller's RNG states, torch thread count, grad mode and the model's training/requires_grad
    flags are as they were afterwards, also after an error."""
    if config is None:
        raise ConfigError("llmc.prune needs a config: the path of a YAML file (e.g. "
                          "configs/sparse/wanda.yml), a dict of sections or a Config")
    given = calibration is not None
    if isinstance(model, (str, os.PathLike)):
        cfg, writes = prune_config(config, overrides, model_given=False,
                                   calibration_given=given, model_path=os.fspath(model))
        _refuse_streaming(cfg)
        method = build_method(cfg.sparse)
        checkpoint = preflight(cfg, method.calibrates(cfg.sparse))
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
        model = load_model(cfg.model).release()
        why = "llmc.prune loaded model.path into memory"
    else:
        cfg, writes = prune_config(config, overrides, calibration_given=given)
        _refuse_streaming(cfg)
        why, checkpoint = "a model object given to llmc.prune", None
    home = check_model_object(model)
    with caller_state_kept(model):
        try:
            record, column_orders = _prune_in_memory(model, tokenizer, cfg, calibration, home,
                                                     why, checkpoint, writes)
        finally:
            model.to(home)
    return Result(model, record, column_orders)


def _refuse_streaming(cfg) -> None:
    if cfg.model.load == "stream":
        raise ConfigError("model.load: stream reads a checkpoint part by part from disk, which "
                          "llmc.prune does not (it prunes a model held in memory); use llmc.run "
                          "or the CLI to stream, or set model.load: auto")


@dataclass
class _Place:
    """Where a run in memory writes: nothing but a temporary scratch directory, or the CLI's
    staged outputs (`out`, llmc.outputs) when the config names a save path."""
    scratch: Path
    out: object = None

    @property
    def out_dir(self) -> Optional[Path]:
        return self.out.dir if self.out is not None else None


@contextlib.contextmanager
def _place_for(cfg, writes: bool):
    if not writes:
        with tempfile.TemporaryDirectory(prefix="llmc-prune-") as scratch:
            yield _Place(Path(scratch) / "activations")
        return
    with open_run(cfg.save) as out:
        yield _Place(out.layout.activations, out)
    shutil.rmtree(out.layout.activations, ignore_errors=True)
    with contextlib.suppress(OSError):
        out.layout.scratch.rmdir()


def _device_for(cfg, home: torch.device) -> torch.device:
    """base.device; `auto` is the GPU the model is on, when it is on one."""
    if cfg.base.device == "auto" and home.type == "cuda":
        return home
    return resolve_device(cfg.base.device)


def _prune_in_memory(model, tokenizer, cfg, calibration, home, why, checkpoint, writes):
    """The CLI's run (llmc.pipeline.prune_and_record) on a model in memory: (record, column
    orders). `checkpoint`: the preflight's, when the model came from one; `writes`:
    whether the outputs go to save.save_path."""
    started = time.perf_counter()
    device = _device_for(cfg, home)
    seed_everything(cfg.base.seed)
    run = run_record(device)
    method = build_method(cfg.sparse)
    calibrates = method.calibrates(cfg.sparse)
    if calibration is not None and not calibrates:
        raise LlmcError(f"sparse.method {cfg.sparse.method} uses no calibration data; call "
                        "llmc.prune without calibration")
    needs_tokenizer = [what for what, needed in (("evaluate (eval.eval_pos)", cfg.eval.eval_pos),
                                                 ("save (save.save_trans)", cfg.save.save_trans))
                       if needed]
    if tokenizer is None and needs_tokenizer:
        raise LlmcError(f"no tokenizer was given, and the config asks llmc.prune to "
                        f"{' and '.join(needs_tokenizer)}: pass the model's tokenizer")
    with handle_of(model, cfg.model) as handle, _place_for(cfg, writes) as place:
        vocab_size = check_against_run(handle, cfg, calibrates)
        refuse_unpackable(cfg, handle)
        batches = (calibration_batches(calibration, cfg.calib, tokenizer)[0]
                   if calibrates else [])
        eval_sets = ({name: eval_tokens(name, cfg.eval, tokenizer) for name in cfg.eval.names}
                     if cfg.eval.eval_pos else {})
        check_token_ids([*(("calibration", b) for b in batches), *eval_sets.items()],
                        vocab_size, "the calibration or the tokenizer given to llmc.prune",
                        "give the model's own tokenizer (and token ids it made)")
        suite = TaskSuite(cfg.eval, tokenizer) if cfg.eval.eval_pos and cfg.eval.tasks else None
        release_freed_memory()
        loaded_rss = current_rss()
        reset_peak_rss()
        run_id = place.out.run_id if place.out is not None else None
        results = new_results(cfg, run_id, {"load": "memory", "why": why, "ranks": 1}, handle,
                              run, batches, eval_sets)
        cache_dir = cfg.save.save_path if place.out is not None else None
        plan = allocate_and_evaluate(cfg, method, handle, batches, eval_sets, device, results,
                                     place.scratch, suite=suite, cache_dir=cache_dir)
        packing = grids_to_pack(cfg, handle, method)
        prune_blocks(cfg, handle, method, plan, batches, device, results, place.scratch)
        results["method"] = method.describe()
        results["plan"] = plan.describe()
        record_achieved(handle, plan, results, place.out_dir)
        evaluate_pruned(cfg, handle, eval_sets, device, results, suite=suite,
                        loaded_rss=loaded_rss)
        if place.out is not None and cfg.save.save_trans:
            save_pruned(cfg, handle, tokenizer, place.out, packing,
                        checkpoint.path if checkpoint else None, device, results)
        results["timings"]["total"] = time.perf_counter() - started
        results["inputs"]["model"] = checkpoint.fingerprint() if checkpoint else None
        results["run"]["finished_utc"] = utc_now()
        if place.out is not None:
            write_results(place.out.dir, results, results["config"])
            place.out.commit()
        column_orders = dict(handle.column_orders)
    logger.info(f"pruned in memory: sparsity {results['sparsity']['overall']:.4f}")
    return results, column_orders
