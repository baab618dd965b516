"""The CLI's run, start to end: the checkpoint checked and loaded, data, then the stages
(llmc.stages: pretrain eval, blockwise pruning, transformed eval), resume and torchrun around
them, and the outputs committed."""
import contextlib
import shutil
import time

from loguru import logger

from .distributed import World, join
from .data import calib_batches, eval_tokens
from .eval.tasks import TaskSuite
from .models import load_for_run, load_tokenizer, preflight
from .models.freed_memory import release_freed_memory
from .errors import LlmcError
from .provenance import InBackground, run_record, utc_now
from .achieved import run_summary
from .runner import resolve_device
from .runner.device import current_rss, reset_peak_rss
from .runner.restructure import reapply_structure
from .runner.resume import ResumeState, resume_fingerprint
from .sparse import build_method
from .sparse.allocation import plan_from_dict, plan_to_dict
from .outputs import Layout, open_run
from .save import write_results
from .stages import (allocate_and_evaluate, evaluate_pruned, grids_to_pack, new_results,
                     prune_blocks, record_achieved, refuse_bench_of_streamed, refuse_unpackable,
                     run_harness_on_saved, save_pruned, seed_everything)


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


def resume_state(cfg, checkpoint, handle, results, device, out, world):
    """A streamed run checkpoints after each block (a model in memory has its finished blocks
    nowhere on disk to resume from)."""
    if not handle.streams:
        return None
    fingerprint = resume_fingerprint(cfg, checkpoint.weights.files, checkpoint.path,
                                     results["inputs"]["calib_tokens_sha256"], device)
    return ResumeState(out.layout.resume, fingerprint, handle.num_blocks, world)


def adopt(point, handle, resume, world, dense_grids):
    """(point, grids): the interrupted run's finished blocks adopted, the model first made as
    small as its structured pass made it (the record in `point.carried`), and a packed save's
    grids (`dense_grids()`) taken in between, from the dense weights; the point is None (start
    over) when anything is not there (for any rank)."""
    grids = None
    try:
        record = point.carried.get("structure")
        if record is not None:
            reapply_structure(handle, record, point.shard_sha256)
        grids = dense_grids()
        handle.adopt_finished_blocks(point.next_block, point.shard_sha256)
        adopted = True
    except (LlmcError, OSError, ValueError, KeyError) as err:
        logger.warning(f"cannot resume: {err}; starting over")
        adopted = False
    if world.all_true(adopted):
        return point, grids
    if world.leads:
        resume.clear()
    world.barrier()
    return None, None


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
    # Under torchrun rank 0 tokenizes and the others take its token ids: ranks on one machine
    # tokenizing the same corpus at once slow each other (measured on the built-in corpus: 3.7 s
    # for one process, 6 s for each of 2 ranks).
    batches, eval_sets = world.broadcast_object((
        calib_batches(cfg.calib, tokenizer) if calibrates else [],
        {name: eval_tokens(name, cfg.eval, tokenizer) for name in cfg.eval.names}
        if cfg.eval.eval_pos else {}) if world.leads else None)
    checkpoint.check_token_ids([*(("calibration", b) for b in batches), *eval_sets.items()])
    # the tasks' data (lm-eval's downloads, the cloze paragraphs) before the model as well
    suite = TaskSuite(cfg.eval, tokenizer, world) if cfg.eval.eval_pos and cfg.eval.tasks else None
    release_freed_memory()  # what tokenizing the corpora left, before the model's parts come
    handle, loaded = load_for_run(cfg.model, checkpoint.weights.files, out.layout.shards, world)
    refuse_bench_of_streamed(cfg, handle)
    refuse_unpackable(cfg, handle)
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

    results = new_results(cfg, out.run_id, loaded, handle, record, batches, eval_sets)
    # a packed save's grids come from the dense weights of the model as it is pruned: after
    # the structured pass (which may make it smaller), and on a resume after that pass is
    # applied again and before the interrupted run's pruned blocks are adopted
    def dense_grids():
        return grids_to_pack(cfg, handle, method, world)

    packing = None
    resume = resume_state(cfg, checkpoint, handle, results, device, out, world)
    point = resume.load(cfg.save.overwrite) if resume else None
    if point is not None:
        point, packing = adopt(point, handle, resume, world, dense_grids)
        if point is None:  # parts may already be the interrupted run's: a fresh skeleton
            handle = load_for_run(cfg.model, checkpoint.weights.files, out.layout.shards,
                                  world)[0]
    if point is None:
        plan = allocate_and_evaluate(cfg, method, handle, batches, eval_sets, device, results,
                                     activations_dir(out, world), world, suite, checkpoint.path,
                                     cache_dir=cfg.save.save_path)
        packing = dense_grids()
        if resume is not None:  # the blocks the states count: those of the smaller model
            resume.num_blocks = handle.num_blocks
        carried = {"ppl": results["ppl"], "tasks": results["tasks"],
                   "timings": dict(results["timings"]), "method": method.describe(),
                   **({"structure": results["structure"]} if "structure" in results else {})}
    else:
        # Allocation and the pretrain eval were done by the interrupted run: their results
        # come back with the plan, so the resumed run records what an uninterrupted one does.
        plan, carried = plan_from_dict(point.plan), point.carried
        results["ppl"], results["resumed_at_block"] = dict(carried["ppl"]), point.next_block
        results["tasks"] = dict(carried.get("tasks", {}))
        if "structure" in carried:
            results["structure"] = dict(carried["structure"])
        results["timings"].update(carried["timings"])
        point.restore_rng()
    plan_record = plan_to_dict(plan)

    def checkpoint_block(next_block, hidden):
        # the weights the finished blocks come from: the interrupted run's, or (rank 0) this
        # run's checkpoint once its background hash is done
        model = point.model_sha256 if point else checkpoint_sha256(model_sha256, wait=False)
        resume.save(next_block, hidden, plan_record, carried, handle.shard_sha256, model)

    prune_blocks(cfg, handle, method, plan, batches, device, results,
                 activations_dir(out, world), world,
                 resume_at=point.next_block if point else 0,
                 resumed_hidden=point.hidden if point else None,
                 after_block=checkpoint_block if resume else None)
    if resume is not None:
        results["timings"]["resume_fsync"] = resume.fsync_seconds
    results["method"] = carried["method"] if point else method.describe()
    results["plan"] = plan.describe()
    if world.leads:  # what rank 0 writes (every rank holds the same pruned weights)
        record_achieved(handle, plan, results, out.dir)
    evaluate_pruned(cfg, handle, eval_sets, device, results, world, suite, loaded_rss)
    if not world.leads:
        return results
    if cfg.save.save_trans:
        saved = save_pruned(cfg, handle, tokenizer, out, packing, checkpoint.path, device,
                            results)
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
