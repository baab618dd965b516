"""Benchmark one config: prune time as a ratio of one dense forward, peak RSS, eval speed.

    python scripts/bench.py [--config configs/sparse/wanda.yml] [--set key=value ...]

In one process and on the same calibration windows it times (1) one dense forward of the windows
through all blocks, done the runner's way (capture, then block by block on the device), (2) the
method's blockwise prune with sparsity_out False and True (each on a fresh copy of the dense
model), and (3) perplexity-eval tokens/s against plain Hugging Face forwards with labels (the loss) over the
same windows. With --compare-per-linear it also prunes with one statistic per Linear instead of
one per input group (q/k/v, gate/up) and reports shared / per-Linear time (SparseGPT: Hessians),
checking that both give identical weights. A method that allocates first (OWL, MixGPT) has its
measuring pass timed as allocate_s, outside the prune time; for MixGPT the Hessian traces are
also given as a ratio to the dense forward, and each probe as a ratio to one dense forward of the
windows it differentiates.
Ratios, not seconds, are the figures to compare across machines.

    python scripts/bench.py --out-of-core [...]

runs scripts/bench_memory.py instead: whole runs streamed and in memory, their peak RSS as a
ratio to the checkpoint and the streamed / in-memory prune time (see its docstring).

    python scripts/bench.py --ranks 2 [...]

runs scripts/bench_ranks.py instead: whole runs as 1 process and as N torchrun ranks, one
thread each, and their speed-ups, phases, peak RSS per rank and agreement (see its docstring).
"""
import dataclasses
import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_memory

from llmc.config import load_config as load  # noqa: E402
from llmc.data import calib_batches, eval_tokens  # noqa: E402
from llmc.eval.perplexity import eval_windows, perplexity  # noqa: E402
from llmc.models import ModelHandle, load_model, load_tokenizer  # noqa: E402
from llmc.sparse import build_method  # noqa: E402
from llmc.runner import Calibration, prune_blockwise, resolve_device  # noqa: E402
from llmc.runner.blockwise import calibration_home, forward_all_blocks  # noqa: E402
from llmc.runner.capture import capture_block_inputs  # noqa: E402
from llmc.runner.loss_hessian import calibration_windows  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_forward_seconds(handle, batches, device, offload):
    sync(device)
    start = time.perf_counter()
    with calibration_home(handle, batches, device, offload) as home:
        forward_all_blocks(handle, capture_block_inputs(handle, batches, device, home), device)
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def plain_hf_tokens_per_second(handle, windows, device, bs):
    with handle.whole_on(device) as model:
        sync(device)
        start = time.perf_counter()
        for i in range(0, len(windows), bs):  # the plain HF way to a window's loss
            ids = windows[i:i + bs].to(device)
            model(input_ids=ids, labels=ids, use_cache=False).loss.item()
        sync(device)
        seconds = time.perf_counter() - start
    return windows.numel() / seconds


def main():
    if "--out-of-core" in sys.argv[1:]:  # whole runs, streamed and in memory: peak RSS
        import bench_memory

        return bench_memory.main([a for a in sys.argv[1:] if a != "--out-of-core"])
    if any(a == "--ranks" or a.startswith("--ranks=") for a in sys.argv[1:]):
        import bench_ranks  # whole runs, 1 process against N torchrun ranks

        return bench_ranks.main(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/sparse/wanda.yml")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--sparsity-out", choices=["both", "false", "true"], default="both",
                        help="which propagation modes to time (each needs a copy of the model)")
    parser.add_argument("--compare-per-linear", action="store_true",
                        help="also time one statistic per Linear instead of one per input group")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    cfg = load(args.config, args.overrides)
    device = resolve_device(cfg.base.device)
    torch.manual_seed(cfg.base.seed)
    tokenizer = load_tokenizer(cfg.model)
    batches = calib_batches(cfg.calib, tokenizer)
    handle = load_model(cfg.model)
    method = build_method(cfg.sparse)
    figures = {"config": args.config, "method": cfg.sparse.method, "device": str(device),
               "calib_tokens": sum(b.numel() for b in batches)}

    dense_forward_seconds(handle, batches[:1], device, cfg.base.offload_activations)
    forward = dense_forward_seconds(handle, batches, device, cfg.base.offload_activations)
    figures["dense_forward_s"] = forward
    start = time.perf_counter()
    plan = method.allocate(cfg.sparse.weight, Calibration(handle, batches, device,
                                                          cfg.base.offload_activations))
    figures["allocate_s"] = time.perf_counter() - start
    figures["allocate_over_forward"] = figures["allocate_s"] / forward
    sensitivity = method.describe().get("sensitivity")
    if sensitivity:  # MixGPT: Hessian traces by Hutchinson probes over the first windows
        windows = calibration_windows(batches, sensitivity["n_samples"])
        window_forward = dense_forward_seconds(handle, windows, device,
                                               cfg.base.offload_activations)
        figures.update({
            "sensitivity_s": sensitivity["seconds"], "sensitivity_probes": sensitivity["probes"],
            "sensitivity_over_forward": sensitivity["seconds"] / forward,
            "sensitivity_window_forward_s": window_forward,
            "probe_over_window_forward":
                sensitivity["seconds"] / sensitivity["probes"] / window_forward})
    modes = {"both": [False, True], "false": [False], "true": [True]}[args.sparsity_out]
    adapter = handle.adapter
    per_linear = dataclasses.replace(adapter, groups=tuple((n,) for n in adapter.linear_names()))
    for flag in modes:
        results = {}
        for kind, table in (("shared", adapter), ("per_linear", per_linear)):
            if kind == "per_linear" and not args.compare_per_linear:
                continue
            pruned = copy.deepcopy(handle.model)
            sync(device)
            start = time.perf_counter()
            prune_blockwise(ModelHandle(pruned, table), method, plan, batches, device,
                            sparsity_out=flag, offload=cfg.base.offload_activations)
            sync(device)
            results[kind] = (time.perf_counter() - start, pruned)
        seconds = results["shared"][0]
        figures[f"prune_s_sparsity_out_{flag}"] = seconds
        figures[f"prune_over_forward_sparsity_out_{flag}"] = seconds / forward
        if "per_linear" in results:
            figures[f"prune_s_per_linear_sparsity_out_{flag}"] = results["per_linear"][0]
            figures[f"shared_over_per_linear_sparsity_out_{flag}"] = seconds / results["per_linear"][0]
            figures[f"identical_sparsity_out_{flag}"] = all(
                torch.equal(a, b) for a, b in zip(results["shared"][1].state_dict().values(),
                                                  results["per_linear"][1].state_dict().values()))
        del results

    name = cfg.eval.names[0]
    tokens = eval_tokens(name, cfg.eval, tokenizer)
    windows = eval_windows(tokens, cfg.eval.seq_len, cfg.eval.max_windows)
    plain_hf_tokens_per_second(handle, windows[:1], device, 1)  # warm-up
    hf_speed = plain_hf_tokens_per_second(handle, windows, device, cfg.eval.bs)
    _, llmc_speed = perplexity(handle, tokens, cfg.eval.seq_len, device, bs=cfg.eval.bs,
                               max_windows=cfg.eval.max_windows,
                               per_block=cfg.eval.inference_per_block, desc="bench eval")
    figures.update({"eval_dataset": name, "eval_tokens": windows.numel(),
                    "eval_tokens_per_s": llmc_speed, "plain_hf_tokens_per_s": hf_speed,
                    "eval_over_plain_hf": llmc_speed / hf_speed,
                    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
    if device.type == "cuda":
        figures["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

    print(f"\n{cfg.sparse.method} on {cfg.model.path} ({device}), "
          f"{figures['calib_tokens']} calibration tokens")
    print(f"  dense forward through all blocks : {forward:8.2f} s")
    if figures["allocate_s"] > 0.01:
        print(f"  allocation (measuring pass)      : {figures['allocate_s']:8.2f} s  = "
              f"{figures['allocate_over_forward']:.3f} x dense forward")
    if "sensitivity_s" in figures:
        print(f"    of which Hessian traces        : {figures['sensitivity_s']:8.2f} s  = "
              f"{figures['sensitivity_over_forward']:.3f} x dense forward; "
              f"{figures['sensitivity_probes']} probes, each "
              f"{figures['probe_over_window_forward']:.2f} x a dense forward of its window(s)")
    for flag in modes:
        print(f"  prune, sparsity_out {str(flag):5}      : "
              f"{figures[f'prune_s_sparsity_out_{flag}']:8.2f} s  = "
              f"{figures[f'prune_over_forward_sparsity_out_{flag}']:.3f} x dense forward")
        if f"prune_s_per_linear_sparsity_out_{flag}" in figures:
            print(f"    per-Linear statistics instead  : "
                  f"{figures[f'prune_s_per_linear_sparsity_out_{flag}']:8.2f} s; shared / "
                  f"per-Linear = {figures[f'shared_over_per_linear_sparsity_out_{flag}']:.3f}, "
                  f"identical weights: {figures[f'identical_sparsity_out_{flag}']}")
    print(f"  eval {name}: {llmc_speed:.0f} tokens/s vs plain HF {hf_speed:.0f} tokens/s "
          f"= {figures['eval_over_plain_hf']:.3f} x")
    print(f"  peak RSS: {figures['peak_rss_gib']:.2f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
