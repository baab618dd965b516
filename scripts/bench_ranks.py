"""Data-parallel benchmark: one config run by 1 process and by N ranks under torchrun, one
thread each, side by side.

    python scripts/bench.py --ranks 2 [--methods wanda,sparsegpt] [--set key=value ...]
                                      [--work DIR] [--json FILE]

For each method (configs/sparse/<method>.yml on the built-in model and corpus, on the CPU, with
the --set overrides) it runs `python -m llmc` once as one process and once as
`torchrun --standalone --nproc_per_node N -m llmc`, each rank with OMP_NUM_THREADS=1 (a
2-core machine holds 2 ranks of 1 thread), one run at a time. It reports, as 1-process / N-rank
ratios (speed-ups): the whole process's wall time, the block loop (prune_total) and the
transformed eval; the block loop's phases per block (forward, prune, the statistics'
all-reduce, the pruned weights' broadcast); each rank's peak RSS, and its peak after loading
above its RSS once loaded (the activations' share and the working memory, without loading's
transient copies); the mask entries that differ between the two runs' saved weights, the
largest relative difference per Linear, and the perplexities' relative differences (the
contract of docs/scaling.md); with --near-ties, whether each Wanda mask difference is a
near-tie.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = ["base.device=cpu", "save.save_trans=True", "save.overwrite=True"]


def run(method: str, ranks: int, overrides, work: Path) -> dict:
    """One run's results.json, with the wall time of its whole process (or torchrun)."""
    save = work / f"{method}-{ranks}"
    shutil.rmtree(save, ignore_errors=True)
    argv = ["-m", "llmc", "--config", f"configs/sparse/{method}.yml", "--log-level", "WARNING"]
    for item in [*DEFAULT_SETTINGS, *overrides, f"save.save_path={save}"]:
        argv += ["--set", item]
    if ranks > 1:
        argv = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    with open(work / f"{method}-{ranks}.log", "w") as log:
        code = subprocess.call([sys.executable, *argv], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code:
        sys.exit(f"bench: {method} on {ranks} rank(s) failed (exit {code}); see "
                 f"{work / f'{method}-{ranks}.log'}")
    results = json.loads((save / "results.json").read_text())
    results["wall_s"] = seconds
    return results


def weights(save: Path) -> dict:
    from safetensors import safe_open

    tensors = {}
    for file in sorted((save / "transformed_model").glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            tensors.update({name: f.get_tensor(name).float() for name in f.keys()})
    return tensors


def agreement(one: Path, many: Path) -> dict:
    """Mask agreement and the largest relative Frobenius difference over the pruned Linears."""
    import torch

    a, b = weights(one), weights(many)
    names = [n for n in a if ".layers." in n and n.endswith("proj.weight")]
    differ = sum(int(((a[n] == 0) != (b[n] == 0)).sum()) for n in names)
    total = sum(a[n].numel() for n in names)
    worst = max(float(torch.linalg.norm(a[n] - b[n]) / torch.linalg.norm(a[n])) for n in names)
    return {"mask_differences": differ, "mask_agreement": 1 - differ / total,
            "max_relative_difference": worst}


def near_ties(method: str, overrides, work: Path, ranks: int, rel: float = 1e-5) -> dict:
    """For Wanda: each mask entry where the N-rank run differs from the 1-process run, checked
    to be a near-tie, i.e. within `rel` of another score of its row, with the scores
    |W_ij| * sqrt(norm_j) from input norms gathered by a plain whole-model forward (hooks on
    every Linear, all windows) on the dense model."""
    import torch

    from llmc.config import load_config
    from llmc.data import calib_batches
    from llmc.models import load_model, load_tokenizer
    from llmc.runner.stats import InputNorms

    cfg = load_config(str(ROOT / f"configs/sparse/{method}.yml"), [*DEFAULT_SETTINGS, *overrides])
    batches = calib_batches(cfg.calib, load_tokenizer(cfg.model))
    model = load_model(cfg.model).model
    a, b = weights(work / f"{method}-1"), weights(work / f"{method}-{ranks}")
    names = [n for n in a if ".layers." in n and n.endswith("proj.weight")
             and bool(((a[n] == 0) != (b[n] == 0)).any())]
    linears = {n: model.get_submodule(n[:-len(".weight")]) for n in names}
    norms = {n: InputNorms(m.in_features, "cpu") for n, m in linears.items()}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: norms[n].add(inp[0]))
             for n, m in linears.items()]
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids, use_cache=False)
    for hook in hooks:
        hook.remove()
    checked = ties = 0
    for name, linear in linears.items():
        score = linear.weight.data.float().abs() * torch.sqrt(norms[name].value)
        for i, j in torch.nonzero((a[name] == 0) != (b[name] == 0)).tolist():
            row = score[i]
            others = torch.cat([row[:j], row[j + 1:]])
            checked += 1
            ties += bool(((others - row[j]).abs() <= rel * row[j]).any())
    return {"differences_checked": checked, "near_ties": ties}


def figures(method: str, one: dict, many: dict, ranks: int, work: Path) -> dict:
    t1, tn = one["timings"], many["timings"]
    row = {"method": method, "ranks": ranks,
           "wall_speedup": one["wall_s"] / many["wall_s"],
           "prune_speedup": t1["prune_total"] / tn["prune_total"],
           "eval_speedup": t1["eval_transformed_builtin"] / tn["eval_transformed_builtin"]
           if "eval_transformed_builtin" in t1 else None,
           "wall_s": [one["wall_s"], many["wall_s"]],
           "prune_s": [t1["prune_total"], tn["prune_total"]],
           "phases_1": {k: t1[f"prune_{k}"] for k in ("forward", "prune", "combine", "share")},
           "phases_n": {k: tn[f"prune_{k}"] for k in ("forward", "prune", "combine", "share")},
           "peak_rss_gib_1": [r / 2**30 for r in one["run"]["peak_rss_bytes"]],
           "peak_rss_gib_n": [r / 2**30 for r in many["run"]["peak_rss_bytes"]],
           # the peak after loading (VmHWM reset then) above the RSS once loaded: the block
           # loop's activations and working memory, and the eval's
           "above_loaded_gib_1": [(p - l) / 2**30 for p, l in
                                  zip(one["run"]["peak_rss_after_load_bytes"],
                                      one["run"]["loaded_rss_bytes"])],
           "above_loaded_gib_n": [(p - l) / 2**30 for p, l in
                                  zip(many["run"]["peak_rss_after_load_bytes"],
                                      many["run"]["loaded_rss_bytes"])],
           # pretrain: the same dense model evaluated by 1 process and by N ranks
           "ppl_relative_difference": {
               f"{pos} {name}": abs(many["ppl"][pos][name] - ppl) / ppl
               for pos, sets in one["ppl"].items() for name, ppl in sets.items()}}
    if one.get("saved_model") and many.get("saved_model"):
        row.update(agreement(work / f"{method}-1", work / f"{method}-{ranks}"))
    return row


def main(argv=None):
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--work", default="/tmp/llmc-bench-ranks")
    parser.add_argument("--json", default=None)
    parser.add_argument("--near-ties", action="store_true",
                        help="check that every Wanda mask difference is a near-tie (one more "
                             "dense forward of the calibration windows)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods.split(","):
        one = run(method, 1, args.overrides, work)
        many = run(method, args.ranks, args.overrides, work)
        rows.append(figures(method, one, many, args.ranks, work))
        r = rows[-1]
        print(f"{method}: whole process {r['wall_s'][0]:.1f} s / {r['wall_s'][1]:.1f} s = "
              f"{r['wall_speedup']:.2f}x; block loop {r['prune_s'][0]:.1f} s / "
              f"{r['prune_s'][1]:.1f} s = {r['prune_speedup']:.2f}x; transformed eval "
              f"{r['eval_speedup'] or float('nan'):.2f}x", flush=True)
        for label, key in (("1 process", "phases_1"), (f"{args.ranks} ranks", "phases_n")):
            print(f"  {label:9} block loop phases (s): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in r[key].items()))
        print(f"  peak RSS GiB: 1 process {r['peak_rss_gib_1'][0]:.2f}; ranks "
              f"{', '.join(f'{v:.2f}' for v in r['peak_rss_gib_n'])}; above the loaded model: "
              f"1 process {r['above_loaded_gib_1'][0]:.3f}, ranks "
              f"{', '.join(f'{v:.3f}' for v in r['above_loaded_gib_n'])} "
              f"(ratio {max(r['above_loaded_gib_n']) / r['above_loaded_gib_1'][0]:.2f})")
        ppl = ", ".join(f"{k} {v:.1e}" for k, v in r["ppl_relative_difference"].items())
        if "mask_agreement" in r:
            print(f"  against 1 process: {r['mask_differences']} mask entries differ "
                  f"({r['mask_agreement'] * 100:.5f}% equal), weights within "
                  f"{r['max_relative_difference']:.2e} (relative Frobenius per Linear); ppl "
                  f"relative difference: {ppl}")
        else:
            print(f"  ppl relative difference: {ppl}")
        if args.near_ties and method == "wanda":
            r.update(near_ties(method, args.overrides, work, args.ranks))
            print(f"  of the {r['differences_checked']} mask differences, {r['near_ties']} are "
                  "near-ties (two scores of a row within 1e-5 relative)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
