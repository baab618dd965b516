"""The stages of a run once its model (a ModelHandle) and its data are at hand: the plan and the
pretrain eval, the blocks pruned, what was achieved recorded, the transformed eval. The CLI's
run (llmc.pipeline: a checkpoint on disk, outputs staged and committed, resume, torchrun) and
the Python API (llmc.api: a model object in memory) both go through them, in this order, so the
two compute the same weights and record the same results."""
import math
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from loguru import logger

from .achieved import sparsity_report, unit_sparsity
from .distributed import World
from .errors import LlmcError
from .faults import pause_point
from .eval import perplexity
from .eval.tasks import task_line
from .packed import dense_grids, write_packed
from .plot import plot_plan
from .runner import Calibration, prune_blockwise
from .runner.restructure import restructure_blockwise
from .models.slicing import parameter_count
from .structure import build_structure
from .data import token_ids_sha256, token_stream_sha256
from .provenance import versions
from .runner.device import free_memory, peak_rss, peak_rss_since_reset
from .bench.measure import checkpoint_bytes
from .save import (COLUMN_ORDERS, MODEL_DIR, PLAN_PLOT, RESULTS_SCHEMA, save_column_orders,
                   save_model)
from .sparse import UnitPlan


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_results(cfg, run_id, loaded, handle, record, batches, eval_sets) -> dict:
    """What results.json holds before the run computes: the config, how the model was loaded
    (`loaded`), its adapter, the run's record (llmc.provenance) and digests of its inputs."""
    return {"schema": RESULTS_SCHEMA, "run_id": run_id, "config": cfg.to_dict(),
            "engine": loaded, "adapter": handle.adapter.describe(),
            "ppl": {}, "tasks": {}, "timings": {},
            "versions": versions(), "run": record,
            "inputs": {"calib_tokens_sha256": token_ids_sha256(batches) if batches else None,
                       "eval_tokens_sha256": {name: token_stream_sha256(tokens)
                                              for name, tokens in eval_sets.items()}}}


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


def allocate_and_evaluate(cfg, method, handle, batches, eval_sets, device, results, scratch,
                          world=World(), suite=None, checkpoint_dir=None, cache_dir=None):
    """The plan, then the pretrain eval. Allocation first: it reads the dense model as the
    pretrain eval does, and its problems (a plan out of range, a cached file for another model)
    should surface before the eval. `cache_dir`: where allocation may keep its measurements
    (the save path), or None."""
    structure = build_structure(cfg.sparse)
    if structure is not None:  # the dense model's eval, then it is made smaller
        if "pretrain" in cfg.eval.eval_pos:
            evaluate(handle, eval_sets, cfg, device, "pretrain", results, world, suite,
                     checkpoint_dir)
        restructure(cfg, structure, handle, batches, device, results, scratch, world)
    start = time.perf_counter()
    calibration = Calibration(handle, batches, device, cfg.base.offload_activations,
                              cache_dir=cache_dir, overwrite=cfg.save.overwrite,
                              scratch=scratch, world=world,
                              min_expert_tokens=cfg.calib.min_expert_tokens)
    plan = method.allocate(cfg.sparse.weight, calibration)
    results["timings"]["allocate"] = time.perf_counter() - start
    pause_point("plan:allocated")
    if "pretrain" in cfg.eval.eval_pos and structure is None:
        evaluate(handle, eval_sets, cfg, device, "pretrain", results, world, suite,
                 checkpoint_dir)
    return plan


def restructure(cfg, structure, handle, batches, device, results, scratch,
                world=World()) -> None:
    """sparse.structure's pass: the model made smaller in place (llmc.runner.restructure);
    what was removed, and the parameters and bytes before and after, into results["structure"]."""
    start = time.perf_counter()
    before = {"blocks": handle.num_blocks, "parameters": parameter_count(handle.model),
              "weight_bytes": handle.weight_bytes}
    done = restructure_blockwise(handle, structure, batches, device,
                                 cfg.base.offload_activations, scratch, world)
    after = {"blocks": handle.num_blocks, "parameters": parameter_count(handle.model),
             "weight_bytes": handle.weight_bytes}
    results["structure"] = {
        "method": structure.describe(), "blocks_removed": done["blocks_removed"],
        "widths": [{"block": index, "removed_kv_groups": widths.removed_groups,
                    "removed_channels": widths.removed_channels,
                    "bias_added": sorted(widths.added_bias)}
                   for index, widths in done["widths"].items()],
        **{key: {"before": before[key], "after": after[key]} for key in before},
        **structure.record()}
    results["timings"]["structure"] = time.perf_counter() - start
    logger.info(f"{structure.NAME}: {before['blocks']} -> {after['blocks']} blocks "
                f"(removed {done['blocks_removed']}), {before['parameters']:,} -> "
                f"{after['parameters']:,} parameters")


def grids_to_pack(cfg, handle, method, world=World()):
    """(grids, bits) of a packed save (save.format: compressed-tensors: llmc.packed), taken from
    the dense weights before pruning (and before resuming) by the rank that saves; None
    otherwise."""
    if cfg.save.format != "compressed-tensors" or not cfg.save.save_trans or not world.leads:
        return None
    return dense_grids(handle, method), method.quantization_bits(cfg.sparse)


def refuse_unpackable(cfg, handle) -> None:
    """A packed save this model cannot have: an error before any heavy work."""
    if cfg.save.format == "compressed-tensors" and handle.adapter.experts:
        # llmc's grids are asymmetric (a zero point per row), and transformers (5.25) cannot
        # load asymmetric packed experts (huggingface/transformers#47430): its round trip, the
        # test of a packed save, fails on them
        raise LlmcError("save.format: compressed-tensors: llmc does not pack MoE experts (their "
                        "asymmetric packed layout does not load back in transformers yet); use "
                        "save.format: hf")


def save_pruned(cfg, handle, tokenizer, out, packing, dense_dir, device, results):
    """transformed_model/ written into the staging directory `out.dir`: saved, rewritten packed
    when `packing` (grids_to_pack) says, measured against `dense_dir` (the checkpoint; None: a
    model object) with save.bench; results["saved_model"] is where it is read after the commit.
    Returns the directory written."""
    saved = save_model(handle, tokenizer, out.dir)
    if "structure" in results:
        results["structure"]["checkpoint_bytes"] = {
            "before": checkpoint_bytes(Path(dense_dir)) if dense_dir is not None else None,
            "after": checkpoint_bytes(saved)}
    if packing is not None:
        results["saved_format"] = write_packed(saved, *packing)
    if dense_dir is not None:
        bench_saved(cfg, handle, dense_dir, saved, device, results)
    results["saved_model"] = str(out.root / MODEL_DIR)
    return saved


def bench_saved(cfg, handle, dense_dir, saved_dir, device, results) -> None:
    """save.bench: the saved model measured against the checkpoint (`dense_dir`) it was pruned
    from, with llmc bench-model's default settings, into results["bench"]."""
    if not cfg.save.bench:
        return
    from .bench.cli import compare_models
    from .bench.measure import Settings
    from .bench.semi_structured import kernels_for

    start = time.perf_counter()
    settings = Settings()  # on CUDA a 2:4 model is also measured on the sparse kernels, last
    record, table = compare_models([dense_dir, saved_dir], device, settings,
                                   convert=kernels_for(settings.two_four_kernels, device))
    logger.info(f"what the pruned model buys (save.bench):\n{table}")
    results["bench"] = record
    results["timings"]["bench"] = time.perf_counter() - start


def refuse_bench_of_streamed(cfg, handle) -> None:
    if cfg.save.bench and handle.streams:
        raise LlmcError("save.bench loads the dense and the pruned model whole, and this model "
                        "is streamed (it does not fit in memory, or model.load: stream); run "
                        "llmc bench-model on a machine that holds it")


def prune_blocks(cfg, handle, method, plan, batches, device, results, scratch, world=World(),
                 resume_at=0, resumed_hidden=None, after_block=None) -> None:
    """Every block pruned to `plan` (from `resume_at`, with the interrupted run's hidden
    states), its timings and the experts' coverage into `results`."""
    start = time.perf_counter()
    under_served = []
    phases = prune_blockwise(handle, method, plan, batches, device,
                             sparsity_out=cfg.sparse.sparsity_out,
                             offload=cfg.base.offload_activations,
                             resume_at=resume_at, resumed_hidden=resumed_hidden,
                             after_block=after_block, scratch=scratch, world=world,
                             min_expert_tokens=cfg.calib.min_expert_tokens,
                             under_served=under_served,
                             column_orders=method.records_column_orders(cfg.sparse))
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


def record_achieved(handle, plan, results, out_dir: Optional[Path]) -> None:
    """The achieved sparsity into `results`; into `out_dir` (None: nothing written) a per-layer
    plan's plot and the column orders of a permuted N:M mask (RIA's reallocation)."""
    if isinstance(plan, UnitPlan):  # one target per layer or Linear (OWL, MixGPT)
        results["plan"]["achieved"] = unit_sparsity(handle, plan.targets)
        if out_dir is not None and plot_plan(results["plan"], out_dir / PLAN_PLOT):
            results["plan_plot"] = PLAN_PLOT
    results["sparsity"] = sparsity_report(handle)
    logger.info(f"achieved sparsity over all decoder Linears: {results['sparsity']['overall']:.4f}")
    if handle.column_orders:
        if out_dir is not None:
            save_column_orders(handle.column_orders, out_dir)
        results["column_orders"] = {"file": COLUMN_ORDERS if out_dir is not None else None,
                                    "linears": len(handle.column_orders)}


def evaluate_pruned(cfg, handle, eval_sets, device, results, world=World(), suite=None,
                    loaded_rss=None) -> None:
    """The transformed eval, then each rank's memory: its RSS once the model was loaded
    (`loaded_rss`), and its peak up to here."""
    if "transformed" in cfg.eval.eval_pos:
        evaluate(handle, eval_sets, cfg, device, "transformed", results, world, suite)
    results["run"]["loaded_rss_bytes"] = world.collect(loaded_rss)
    results["run"]["peak_rss_bytes"] = world.collect(peak_rss())
    results["run"]["peak_rss_after_load_bytes"] = world.collect(peak_rss_since_reset())
