"""Sweep a config over sparsity values and collect every run's perplexity into one CSV.

    python scripts/sweep.py --config configs/sparse/wanda.yml --sparsity 0.3 0.4 0.5 0.6 \
        --out sweep.csv [--set key=value ...]

Each run saves under <save_path>/sparsity_<value>/; the dense (pretrain) perplexity is measured
once, by the first run, and repeated in every row.
"""
import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmc.config import load_config as load  # noqa: E402
from llmc.pipeline import run  # noqa: E402

FIELDS = ["method", "sparsity", "sparsity_type", "dataset", "ppl_pretrain", "ppl_transformed",
          "achieved_sparsity", "prune_s", "results"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--sparsity", type=float, nargs="+", required=True)
    parser.add_argument("--out", default="sweep.csv")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    base = load(args.config, args.overrides)
    pretrain = {}
    rows = []
    for index, sparsity in enumerate(args.sparsity):
        save_path = str(Path(base.save.save_path) / f"sparsity_{sparsity:g}")
        overrides = args.overrides + [f"sparse.weight.sparsity={sparsity}",
                                      f"save.save_path={save_path}"]
        positions = [p for p in base.eval.eval_pos if index == 0 or p != "pretrain"]
        overrides.append(f"eval.eval_pos=[{', '.join(positions)}]")
        cfg = load(args.config, overrides)  # validated again: a bad value fails before running
        results = run(cfg)
        pretrain.update(results["ppl"].get("pretrain", {}))
        for dataset, ppl in results["ppl"].get("transformed", {}).items():
            rows.append({"method": cfg.sparse.method, "sparsity": sparsity,
                         "sparsity_type": cfg.sparse.weight.sparsity_type, "dataset": dataset,
                         "ppl_pretrain": pretrain.get(dataset, ""), "ppl_transformed": ppl,
                         "achieved_sparsity": results["sparsity"]["overall"],
                         "prune_s": results["timings"]["prune_total"],
                         "results": str(Path(save_path) / "results.json")})
        with open(args.out, "w", newline="") as f:  # rewritten after each run: partial sweeps count
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
