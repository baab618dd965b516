"""One run, start to end: data → pretrain eval → blockwise pruning → transformed eval → save."""
import contextlib
import dataclasses
import math
import random
import shutil
import time

import numpy as np
import torch
from loguru import logger

from .distributed import World, join
from .data import calib_batches, eval_tokens, token_ids_sha256, token_stream_sha256
from .eval import perplexity
from .eval.tasks import TaskSuite, task_line
from .models import load_for_run, load_tokenizer, preflight
from .errors import LlmcError
from .provenance import InBackground, run_record, utc_now, versions
from .achieved import run_summary, sparsity_report, unit_sparsity
from .plot import plot_plan
from .runner import Calibration, prune_blockwise, resolve_device
from .runner.device import (current_rss, free_memory, peak_rss, peak_rss_since_reset,
                            release_freed_memory, reset_peak_rss)
from .runner.resume import ResumeState, resume_fingerprint
from .sparse import UnitPlan, build_method
from .sparse.allocation import plan_from_dict, plan_to_dict
from .outputs import Layout, open_run
from .save import (COLUMN_ORDERS, MODEL_DIR, PLAN_PLOT, RESULTS_SCHEMA, save_column_orders,
                   save_model, write_results)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate(handle, eval_sets, cfg, device, position, results, world=World(), suite=None,
             checkpoint_dir=None):
    """Perplexity on each dataset, then the accuracy tasks (llmc.eval.tasks), at `position`.
    lm-eval reads a streamed model from disk: the checkpoint (`checkpoint_dir`) before pruning;
    after it, the saved output (run_harness_on_saved, once it is written)."""
    ev = cfg.eval
    per_block = ev.inference_per_block or not whole_model_fits(handle, device)
    for name, tokens in eval_sets.items():
        start = time.perf_counter()
        ppl, speed = perplexity(handle, tokens, ev.seq_len, device, bs=ev.bs,
                                max_windows=ev.max_windows, per_block=per_block,
                                desc=f"{position} {name}", world=world)
        logger.info(f"ppl {position} {name}: {ppl:.4f} ({speed:.0f} tokens/s)")
        results["ppl"].setdefault(position, {})[name] = ppl
        results["timings"][f"eval_{position}_{name}"] = time.perf_counter() - start
        if position == "transformed" and not math.isfinite(ppl):
            # A NaN or infinite perplexity is a broken model, not a result: nothing is saved.
            dense = results["ppl"].get("pretrain", {}).get(name)
            raise LlmcError(f"the pruned model's perplexity on {name} is {ppl}"
                            f"{f' (dense: {dense:.4f})' if dense is not None else ''}: it is "
                            "broken, so no outputs were saved; with model.torch_dtype float16, "
                            "try bfloat16 or float32")
    if suite is None:
        return
    if suite.cloze is not None:
        start = time.perf_counter()
        record_tasks(results, position, {"cloze": suite.run_cloze(handle, device, world)},
                     time.perf_counter() - start, "cloze")
    if suite.harness and not handle.streams:
        start = time.perf_counter()
        with handle.whole_on(device) as model:
            metrics = suite.run_harness(model, device)
        record_tasks(results, position, metrics, time.perf_counter() - start, "lm_eval")
    elif suite.harness and position == "pretrain":
        start = time.perf_counter()
        dtype = str(handle.dtype).removeprefix("torch.")  # model.torch_dtype, as the run reads it
        record_tasks(results, position, suite.run_harness(str(checkpoint_dir), device, dtype),
                     time.perf_counter() - start, "lm_eval")


def run_harness_on_saved(suite, saved_dir, device, results):
    """lm-eval's tasks on the saved output: how a streamed model gets them after pruning."""
    start = time.perf_counter()
    record_tasks(results, "transformed", suite.run_harness(str(saved_dir), device),
                 time.perf_counter() - start, "lm_eval")


def record_tasks(results, position, metrics, seconds, timed_as):
    """{task: metrics} at `position` into results (and the log); their time as
    eval_<position>_<timed_as> (cloze, lm_eval)."""
    for task, values in metrics.items():
        logger.info(f"{position} {task_line(task, values)}")
        results["tasks"].setdefault(position, {})[task] = values
    results["timings"][f"eval_{position}_{timed_as}"] = seconds


def whole_model_fits(handle, device) -> bool:
    """A streamed model is evaluated whole (eval.inference_per_block: False) only when all of
    it fits in half of the device's free memory; otherwise block by block, as it was pruned."""
    if not handle.streams:
        return True
    free = free_memory(device)
    if handle.weight_bytes <= free // 2:
        return True
    logger.info(f"evaluating block by block: the whole model ({handle.weight_bytes / 2**30:.1f} "
                f"GiB) does not fit half of the {free / 2**30:.1f} GiB free on {device}")
    return False


class FollowingRun:
    """What a rank other than 0 knows of the save path: where the scratch files are. It takes
    no lock and writes no outputs (rank 0 does, holding the lock while every rank runs)."""
    run_id = None

    def __init__(self, save_path):
        self.layout = Layout.of(save_path)


def run(cfg) -> dict:
    """Run `cfg` (a validated Config); returns the results that are also written to disk.
    Under torchrun every rank runs it (llmc.distributed); rank 0 alone owns the save path."""
    device = resolve_device(cfg.base.device)
    world = join(device, cfg.base.collective_timeout)
    if not world.leads:
        world.barrier()  # rank 0 holds the lock and has cleaned the save path's leftovers
        results = prune_and_record(cfg, FollowingRun(cfg.save.save_path), device, world)
        world.barrier()  # rank 0 has committed the outputs (or failed: then so does this rank)
        return results
    # The save path is locked, proven writable and checked before any heavy work; the outputs
    # are staged in out.dir and committed together at the end (llmc.outputs, docs/outputs.md).
    with open_run(cfg.save) as out:
        world.barrier()
        results = prune_and_record(cfg, out, device, world)
        out.commit()
        # The finished blocks and the resume state served their purpose once the run is
        # committed (the output holds its own names for the shards). A run held in memory
        # leaves an interrupted streamed run's state alone: it is not this run's.
        done = [out.layout.activations]
        if results["engine"]["load"] == "stream":
            done += [out.layout.shards, out.layout.resume]
        for scratch in done:
            shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError):  # only when nothing else is kept there
            out.layout.scratch.rmdir()
    world.barrier()
    logger.info(f"done: {run_summary(results, out.root)}")
    return results


def allocate_and_evaluate(cfg, method, handle, batches, eval_sets, device, results, scratch,
                          world, suite=None, checkpoint_dir=None):
    """The plan, then the pretrain eval. Allocation first: it reads the dense model as the
    pretrain eval does, and its problems (a plan out of range, a cached file for another model)
    should surface before the eval."""
    start = time.perf_counter()
    calibration = Calibration(handle, batches, device, cfg.base.offload_activations,
                              cache_dir=cfg.save.save_path, overwrite=cfg.save.overwrite,
                              scratch=scratch, world=world,
                              min_expert_tokens=cfg.calib.min_expert_tokens)
    plan = method.allocate(cfg.sparse.weight, calibration)
    results["timings"]["allocate"] = time.perf_counter() - start
    if "pretrain" in cfg.eval.eval_pos:
        evaluate(handle, eval_sets, cfg, device, "pretrain", results, world, suite,
                 checkpoint_dir)
    return plan


def resume_state(cfg, checkpoint, handle, results, device, out, world):
    """A streamed run checkpoints after each block (a model in memory has its finished blocks
    nowhere on disk to resume from)."""
    if not handle.streams:
        return None
    fingerprint = resume_fingerprint(cfg, checkpoint.weights.files, checkpoint.path,
                                     results["inputs"]["calib_tokens_sha256"], device)
    return ResumeState(out.layout.resume, fingerprint, handle.num_blocks, world)


def adopt(point, handle, resume, world):
    """The interrupted run's finished blocks, or None (start over) when they are not all there
    (for any rank)."""
    try:
        handle.adopt_finished_blocks(point.next_block, point.shard_sha256)
        adopted = True
    except (LlmcError, OSError, ValueError, KeyError) as err:
        logger.warning(f"cannot resume: {err}; starting over")
        adopted = False
    if world.all_true(adopted):
        return point
    if world.leads:
        resume.clear()
    world.barrier()
    return None


def checkpoint_sha256(background, wait: bool = True):
    """The checkpoint's combined sha256 from the record's background hash (None on a rank that
    does not compute it, before it is done when not `wait`, or when a file could not be read)."""
    if background is None or not (wait or background.done()):
        return None
    return (background.result() or {}).get("sha256")


def activations_dir(out, world):
    """offload "disk"'s directory: one per rank under torchrun."""
    directory = out.layout.activations
    return directory / f"rank{world.rank}" if world.distributed else directory


def report(handle, plan, results, out):
    """The achieved sparsity (and a per-layer plan's plot) into `results`."""
    if isinstance(plan, UnitPlan):  # one target per layer or Linear (OWL, MixGPT)
        results["plan"]["achieved"] = unit_sparsity(handle, plan.targets)
        if plot_plan(results["plan"], out.dir / PLAN_PLOT):
            results["plan_plot"] = PLAN_PLOT
    results["sparsity"] = sparsity_report(handle)
    logger.info(f"achieved sparsity over all decoder Linears: {results['sparsity']['overall']:.4f}")


def prune_and_record(cfg, out, device, world=World()) -> dict:
    """The run itself, writing its outputs into the staging directory `out.dir` (rank 0; the
    other ranks under torchrun compute their share and write nothing)."""
    started = time.perf_counter()
    seed_everything(cfg.base.seed)
    record = run_record(device)
    method = build_method(cfg.sparse)
    calibrates = method.calibrates(cfg.sparse)

    # The checkpoint's cheap checks (no weights loaded), then data before the model: a problem
    # with either should surface before the slow part. (Calibration sampling seeds its own RNG
    # and tokenizing the eval text draws none: the order is free.)
    checkpoint = preflight(cfg, calibrates)
    tokenizer = load_tokenizer(cfg.model)
    batches = calib_batches(cfg.calib, tokenizer) if calibrates else []
    eval_sets = ({name: eval_tokens(name, cfg.eval, tokenizer) for name in cfg.eval.names}
                 if cfg.eval.eval_pos else {})
    checkpoint.check_token_ids([*(("calibration", b) for b in batches), *eval_sets.items()])
    # the tasks' data (lm-eval's downloads, the cloze paragraphs) before the model as well
    suite = TaskSuite(cfg.eval, tokenizer, world) if cfg.eval.eval_pos and cfg.eval.tasks else None
    release_freed_memory()  # what tokenizing the corpora left, before the model's parts come
    model_cfg, why = cfg.model, None
    if method.records_column_orders(cfg.sparse) and cfg.model.load == "auto":
        why = "sparse.ria.reallocation keeps each Linear's column order with a model in memory"
        model_cfg = dataclasses.replace(cfg.model, load="memory")
    handle, loaded = load_for_run(model_cfg, checkpoint.weights.files, out.layout.shards, world)
    loaded["why"] = why or loaded["why"]
    if (suite and suite.harness and handle.streams and "transformed" in cfg.eval.eval_pos
            and not cfg.save.save_trans):
        raise LlmcError("eval.tasks: lm-eval reads a streamed model from disk, so after pruning "
                        "it needs the saved output: set save.save_trans: True (or model.load: "
                        "memory, when the model fits)")
    loaded["ranks"] = world.size
    loaded_rss = current_rss()
    reset_peak_rss()  # the peak from here on: the run's working memory, not loading's copies
    # read while the run computes (by rank 0, which records it)
    model_sha256 = InBackground(checkpoint.fingerprint) if world.leads else None

    results = {"schema": RESULTS_SCHEMA, "run_id": out.run_id, "config": cfg.to_dict(),
               "engine": loaded, "adapter": handle.adapter.describe(),
               "ppl": {}, "tasks": {}, "timings": {},
               "versions": versions(), "run": record,
               "inputs": {"calib_tokens_sha256": token_ids_sha256(batches) if batches else None,
                          "eval_tokens_sha256": {name: token_stream_sha256(tokens)
                                                 for name, tokens in eval_sets.items()}}}
    resume = resume_state(cfg, checkpoint, handle, results, device, out, world)
    point = resume.load(cfg.save.overwrite) if resume else None
    if point is not None:
        point = adopt(point, handle, resume, world)
    if point is None:
        plan = allocate_and_evaluate(cfg, method, handle, batches, eval_sets, device, results,
                                     activations_dir(out, world), world, suite, checkpoint.path)
        carried = {"ppl": results["ppl"], "tasks": results["tasks"],
                   "timings": dict(results["timings"]), "method": method.describe()}
    else:
        # Allocation and the pretrain eval were done by the interrupted run: their results
        # come back with the plan, so the resumed run records what an uninterrupted one does.
        plan, carried = plan_from_dict(point.plan), point.carried
        results["ppl"], results["resumed_at_block"] = dict(carried["ppl"]), point.next_block
        results["tasks"] = dict(carried.get("tasks", {}))
        results["timings"].update(carried["timings"])
        point.restore_rng()
    plan_record = plan_to_dict(plan)

    def checkpoint_block(next_block, hidden):
        # the weights the finished blocks come from: the interrupted run's, or (rank 0) this
        # run's checkpoint once its background hash is done
        model = point.model_sha256 if point else checkpoint_sha256(model_sha256, wait=False)
        resume.save(next_block, hidden, plan_record, carried, handle.shard_sha256, model)

    start = time.perf_counter()
    under_served = []
    phases = prune_blockwise(handle, method, plan, batches, device,
                             sparsity_out=cfg.sparse.sparsity_out,
                             offload=cfg.base.offload_activations,
                             resume_at=point.next_block if point else 0,
                             resumed_hidden=point.hidden if point else None,
                             after_block=checkpoint_block if resume else None,
                             scratch=activations_dir(out, world), world=world,
                             min_expert_tokens=cfg.calib.min_expert_tokens,
                             under_served=under_served)
    results["timings"]["prune_total"] = time.perf_counter() - start
    if handle.adapter.experts:
        results["experts"] = {"min_expert_tokens": cfg.calib.min_expert_tokens,
                              "under_served": under_served}
        if under_served:
            logger.warning(f"{len(under_served)} expert(s) got fewer than "
                           f"{cfg.calib.min_expert_tokens} calibration tokens and were measured "
                           "on all tokens (results.json experts.under_served)")
    if handle.streams and world.distributed:
        world.barrier()  # rank 0 has written every block: the others read them from there on
        if not world.leads:
            handle.adopt_finished_blocks(handle.num_blocks)
    results["timings"].update({f"prune_{k}": v for k, v in phases.items()})
    if resume is not None:
        results["timings"]["resume_fsync"] = resume.fsync_seconds
    results["method"] = carried["method"] if point else method.describe()
    results["plan"] = plan.describe()
    if world.leads:  # what rank 0 writes (every rank holds the same pruned weights)
        report(handle, plan, results, out)
        if handle.column_orders:
            save_column_orders(handle.column_orders, out.dir)
            results["column_orders"] = {"file": COLUMN_ORDERS,
                                        "linears": len(handle.column_orders)}

    if "transformed" in cfg.eval.eval_pos:
        evaluate(handle, eval_sets, cfg, device, "transformed", results, world, suite)
    # each rank's memory: its RSS once the model was loaded, and its peak up to here
    results["run"]["loaded_rss_bytes"] = world.collect(loaded_rss)
    results["run"]["peak_rss_bytes"] = world.collect(peak_rss())
    results["run"]["peak_rss_after_load_bytes"] = world.collect(peak_rss_since_reset())
    if not world.leads:
        return results
    if cfg.save.save_trans:
        saved = save_model(handle, tokenizer, out.dir)
        results["saved_model"] = str(out.root / MODEL_DIR)  # where it is read after the commit
        if suite and suite.harness and handle.streams and "transformed" in cfg.eval.eval_pos:
            run_harness_on_saved(suite, saved, device, results)
    results["timings"]["total"] = time.perf_counter() - started
    results["inputs"]["model"] = model_sha256.result()
    if point is not None and checkpoint_sha256(model_sha256) != point.model_sha256:
        resume.clear()
        raise LlmcError(f"the checkpoint {cfg.model.path} changed since the interrupted run "
                        "(its weight files' sha256 differ, though their names, sizes and times "
                        "do not): the blocks it finished were pruned from other weights, so "
                        "nothing was saved and its resume state was discarded; run again to "
                        "start over")
    results["run"]["finished_utc"] = utc_now()
    write_results(out.dir, results, results["config"])
    return results
