"""One run, start to end: data → pretrain eval → blockwise pruning → transformed eval → save."""
import random
import time

import numpy as np
import torch
from loguru import logger

from .data import calib_batches, eval_tokens
from .eval import perplexity
from .models import load_model, load_tokenizer
from .report import sparsity_report, unit_sparsity, versions
from .plot import plot_plan
from .runner import Calibration, prune_blockwise, resolve_device
from .sparse import UnitPlan, build_method
from .outputs import open_run
from .save import MODEL_DIR, PLAN_PLOT, save_model, write_results


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate(handle, eval_sets, cfg, device, position, results):
    ev = cfg.eval
    for name, tokens in eval_sets.items():
        start = time.perf_counter()
        ppl, speed = perplexity(handle, tokens, ev.seq_len, device, bs=ev.bs,
                                max_windows=ev.max_windows, per_block=ev.inference_per_block,
                                desc=f"{position} {name}")
        logger.info(f"ppl {position} {name}: {ppl:.4f} ({speed:.0f} tokens/s)")
        results["ppl"].setdefault(position, {})[name] = ppl
        results["timings"][f"eval_{position}_{name}"] = time.perf_counter() - start


def run(cfg) -> dict:
    """Run `cfg` (a validated Config); returns the results that are also written to disk."""
    # The save path is locked, proven writable and checked before any heavy work; the outputs
    # are staged in out.dir and committed together at the end (llmc.outputs, docs/outputs.md).
    with open_run(cfg.save) as out:
        results = prune_and_record(cfg, out)
        out.commit()
    return results


def prune_and_record(cfg, out) -> dict:
    """The run itself, writing its outputs into the staging directory `out.dir`."""
    started = time.perf_counter()
    seed_everything(cfg.base.seed)
    device = resolve_device(cfg.base.device)
    method = build_method(cfg.sparse)

    # Data before the model: a data problem should surface before the slow part.
    tokenizer = load_tokenizer(cfg.model)
    eval_sets = ({name: eval_tokens(name, cfg.eval, tokenizer) for name in cfg.eval.names}
                 if cfg.eval.eval_pos else {})
    batches = calib_batches(cfg.calib, tokenizer) if method.calibrates(cfg.sparse) else []
    handle = load_model(cfg.model)

    results = {"run_id": out.run_id, "config": cfg.to_dict(), "ppl": {}, "timings": {},
               "versions": versions()}
    # Allocation first: it reads the dense model as the pretrain eval does, and its problems
    # (a plan out of range, a cached file for another model) should surface before the eval.
    start = time.perf_counter()
    calibration = Calibration(handle, batches, device, cfg.base.offload_activations,
                              cache_dir=cfg.save.save_path, overwrite=cfg.save.overwrite)
    plan = method.allocate(cfg.sparse.weight, calibration)
    results["timings"]["allocate"] = time.perf_counter() - start
    if "pretrain" in cfg.eval.eval_pos:
        evaluate(handle, eval_sets, cfg, device, "pretrain", results)

    start = time.perf_counter()
    phases = prune_blockwise(handle, method, plan, batches, device,
                             sparsity_out=cfg.sparse.sparsity_out,
                             offload=cfg.base.offload_activations)
    results["timings"]["prune_total"] = time.perf_counter() - start
    results["timings"].update({f"prune_{k}": v for k, v in phases.items()})
    results["method"] = method.describe()
    results["plan"] = plan.describe()
    if isinstance(plan, UnitPlan):  # one target per layer or Linear (OWL, MixGPT)
        results["plan"]["achieved"] = unit_sparsity(handle, plan.targets)
        if plot_plan(results["plan"], out.dir / PLAN_PLOT):
            results["plan_plot"] = PLAN_PLOT
    results["sparsity"] = sparsity_report(handle)
    logger.info(f"achieved sparsity over all decoder Linears: {results['sparsity']['overall']:.4f}")

    if "transformed" in cfg.eval.eval_pos:
        evaluate(handle, eval_sets, cfg, device, "transformed", results)
    if cfg.save.save_trans:
        save_model(handle.model, tokenizer, out.dir)
        results["saved_model"] = str(out.root / MODEL_DIR)  # where it is read after the commit
    results["timings"]["total"] = time.perf_counter() - started
    write_results(out.dir, results, results["config"])
    return results
