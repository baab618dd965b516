"""Methods side by side: perplexity and prune time (as a ratio to one dense forward of the
calibration windows) of each method at each sparsity, in one process on one model, one set of
calibration windows and one eval set.

    python scripts/bench_methods.py [--config configs/sparse/wanda.yml] [--set key=value ...] \
        [--settings 0.5 2:4 0.7] [--methods NAME=OVERRIDES ...] [--json out.json]

A method is a name and `;`-separated --set overrides of the sparse section, e.g.
`Wanda+ADMM=sparse.update=admm`; the defaults are Wanda, SparseGPT, RIA, Wanda + DSnoT, Wanda +
ADMM and Wanda + gradual ADMM. Each prunes a fresh copy of the dense model with the config's
sparsity_out; the dense forward is timed the runner's way (capture, then block by block). Prints
one markdown table: a row per method, per setting its ppl and prune / dense forward.
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import dense_forward_seconds, sync  # noqa: E402
from llmc.config import load_config as load  # noqa: E402
from llmc.data import calib_batches, eval_tokens  # noqa: E402
from llmc.eval.perplexity import perplexity  # noqa: E402
from llmc.models import ModelHandle, load_model, load_tokenizer  # noqa: E402
from llmc.runner import Calibration, prune_blockwise, resolve_device  # noqa: E402
from llmc.sparse import build_method  # noqa: E402

METHODS = ["Wanda=sparse.method=Wanda", "SparseGPT=sparse.method=SparseGPT",
           "RIA=sparse.method=RIA", "Wanda+DSnoT=sparse.method=Wanda;sparse.refine=dsnot",
           "Wanda+ADMM=sparse.method=Wanda;sparse.update=admm",
           "Wanda+ADMM gradual=sparse.method=Wanda;sparse.update=admm_gradual"]


def setting_overrides(setting: str):
    if ":" in setting:
        return [f"sparse.weight.sparsity_type={setting}"]
    return ["sparse.weight.sparsity_type=unstructured", f"sparse.weight.sparsity={setting}"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/sparse/wanda.yml")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--settings", nargs="+", default=["0.5", "2:4", "0.7"])
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--json")
    args = parser.parse_args()

    base = load(args.config, args.overrides)
    device = resolve_device(base.base.device)
    tokenizer = load_tokenizer(base.model)
    batches = calib_batches(base.calib, tokenizer)
    tokens = eval_tokens(base.eval.names[0], base.eval, tokenizer)
    handle = load_model(base.model)
    dense_forward_seconds(handle, batches[:1], device, base.base.offload_activations)  # warm-up
    forward = dense_forward_seconds(handle, batches, device, base.base.offload_activations)
    dense_ppl, _ = perplexity(handle, tokens, base.eval.seq_len, device, bs=base.eval.bs,
                              max_windows=base.eval.max_windows, desc="dense")
    figures = {"config": args.config, "overrides": args.overrides, "device": str(device),
               "calib_windows": len(batches), "dense_forward_s": forward, "dense_ppl": dense_ppl,
               "runs": []}
    for entry in args.methods:
        name, _, sets = entry.partition("=")
        for setting in args.settings:
            cfg = load(args.config, args.overrides + sets.split(";") + setting_overrides(setting))
            method = build_method(cfg.sparse)
            pruned = ModelHandle(copy.deepcopy(handle.model), handle.adapter)
            calibration = Calibration(pruned, batches, device, cfg.base.offload_activations)
            sync(device)
            start = time.perf_counter()
            plan = method.allocate(cfg.sparse.weight, calibration)
            prune_blockwise(pruned, method, plan, batches, device,
                            sparsity_out=cfg.sparse.sparsity_out,
                            offload=cfg.base.offload_activations)
            sync(device)
            seconds = time.perf_counter() - start
            ppl, _ = perplexity(pruned, tokens, cfg.eval.seq_len, device, bs=cfg.eval.bs,
                                max_windows=cfg.eval.max_windows, desc=f"{name} {setting}")
            run = {"method": name, "setting": setting, "ppl": ppl, "prune_s": seconds,
                   "prune_over_forward": seconds / forward}
            print(json.dumps(run), flush=True)
            figures["runs"].append(run)
            del pruned
    print(f"\n{base.model.path}, {len(batches)} calibration windows of {base.calib.seq_len} "
          f"tokens (dense forward {forward:.1f} s), ppl over {base.eval.max_windows or 'all'} "
          f"windows of {base.eval.seq_len} (dense {dense_ppl:.2f}); time = prune / dense forward\n")
    print("| method | " + " | ".join(f"{s} ppl | {s} time" for s in args.settings) + " |")
    print("|---|" + "---|---|" * len(args.settings))
    for entry in args.methods:
        name = entry.partition("=")[0]
        cells = []
        for setting in args.settings:
            run = next(r for r in figures["runs"] if r["method"] == name and r["setting"] == setting)
            cells += [f"{run['ppl']:.2f}", f"{run['prune_over_forward']:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
