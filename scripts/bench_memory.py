"""Out-of-core benchmark: peak RSS and prune time of whole runs, streamed and in memory.

    python scripts/bench.py --out-of-core [--models builtin,synthetic] [--methods wanda,sparsegpt]
                                          [--engines memory,stream] [--work DIR] [--json FILE]

Without the three lists it runs DEFAULT_RUNS (below; about 22 minutes on 2 cores).

Each run is `python -m llmc` in a child process of its own (one at a time, the same thread
count for all), on 16 calibration windows of 256 tokens from the built-in corpus, no eval, the
model saved. Its peak RSS is the child's ru_maxrss read with os.wait4 (which also counts the
touched pages of memory-mapped files), reported as a ratio to the checkpoint's weight bytes;
its prune time, write time and resume-checkpoint time come from its results.json.

`synthetic` is a checkpoint with TinyLlama-1.1B's shapes (hidden 2048, intermediate 5632, 22
layers, 32 heads / 4 KV heads, untied head) and the built-in tokenizer's vocabulary, made once
from a seeded random init in fp32 (~4.7 GB) under --work and reused (a marker file is written
last). Its runs need ~10 GB of disk with their outputs.

`--methods mixgpt-sensitivity` runs MixGPT's Hessian traces alone (blockwise, the default;
`mixgpt-sensitivity-whole`: the whole-model double backward) for 3 probes (1 on synthetic7b)
over one window and stops there; its row's prune time is the traces' time, its time per block
that per probe and block. Both on one model and engine also give the blockwise / whole-model
time per probe.

`--methods ria-realloc` is RIA 2:4 with the channel reallocation (configs/sparse/ria_2-4.yml,
`sparse.ria.reallocation: True`).

`synthetic7b` has Llama-2-7B's shapes (hidden 4096, intermediate 11008, 32 layers, 32 heads,
untied head; the built-in tokenizer's vocabulary of 49152 for its 32000) in bfloat16, ~13.9 GB,
written tensor by tensor (scripts/synthetic_checkpoint.py: the maker never holds the model),
and runs on 4 calibration windows of 128 tokens (SEVEN_B_CALIBRATION). Its runs need ~30 GB of
disk with their outputs (the streamed shards and the saved model share their bytes).

`synthetic-moe` is a Qwen3-MoE-shaped checkpoint of 2.11B parameters (hidden 2048, 24 layers,
each with 8 experts of intermediate 1408, 2 per token; 16 heads / 4 KV heads of 128) in
bfloat16, ~3.9 GB, written tensor by tensor in the published layout (one tensor per expert
matrix), and runs on 8 calibration windows of 256 tokens (MOE_CALIBRATION).
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
MARKER = "llmc-bench-complete"
SYNTHETIC_SHAPES = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                        num_attention_heads=32, num_key_value_heads=4,
                        max_position_embeddings=2048, tie_word_embeddings=False)
SEVEN_B_SHAPES = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32,
                      max_position_embeddings=4096, tie_word_embeddings=False)
MOE_SHAPES = dict(hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
                  num_experts=8, num_experts_per_tok=2, num_hidden_layers=24,
                  num_attention_heads=16, num_key_value_heads=4, head_dim=128,
                  max_position_embeddings=2048, tie_word_embeddings=False, mlp_only_layers=[],
                  decoder_sparse_step=1)
CALIBRATION = ["calib.n_samples=16", "calib.seq_len=256", "eval.eval_pos=[]",
               "save.save_trans=True", "save.overwrite=True", "base.device=cpu"]
SEVEN_B_CALIBRATION = [*CALIBRATION, "calib.n_samples=4", "calib.seq_len=128"]
MOE_CALIBRATION = [*CALIBRATION, "calib.n_samples=8", "model.type=Qwen3Moe"]
CALIBRATIONS = {"synthetic7b": SEVEN_B_CALIBRATION, "synthetic-moe": MOE_CALIBRATION}
# Runs of MixGPT's Hessian traces alone: the run stops once its allocation step is done
# (LLMC_FAIL_AT=plan:allocated) after a fixed number of probes over the first window; the
# traces' time and probes come from save_path/sensitivity.json.
# Methods named by a shipped config and settings of their own: RIA's 2:4 with the channel
# reallocation (the column orders written beside each streamed block).
CONFIG_RUNS = {"ria-realloc": ("ria_2-4", ["sparse.ria.reallocation=True"])}
SENSITIVITY_RUNS = {"mixgpt-sensitivity": "sparse.mixgpt.sensitivity.blockwise=True",
                    "mixgpt-sensitivity-whole": "sparse.mixgpt.sensitivity.blockwise=False"}
SENSITIVITY_PROBES = ["sparse.mixgpt.sensitivity.max_iter=3", "sparse.mixgpt.sensitivity.tol=0",
                      "sparse.mixgpt.sensitivity.n_samples=1"]


def synthetic_config(vocab_size: int, shapes=SYNTHETIC_SHAPES):
    from transformers import LlamaConfig, Qwen3MoeConfig

    family = Qwen3MoeConfig if "num_experts" in shapes else LlamaConfig
    return family(vocab_size=vocab_size, **shapes)


def weight_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def builtin_dir() -> Path:
    from llmc.models.builtin import resolve_model_path  # the cached Hugging Face directory

    return Path(resolve_model_path("builtin:smollm2-135m"))


def made_once(target: Path, source: Path, need_gib: int, write) -> Path:
    """`target`, made by `write(target, vocab_size)` with `source`'s tokenizer beside it unless
    an earlier bench completed it (a marker file is written last)."""
    if (target / MARKER).exists():
        return target
    free = shutil.disk_usage(target.parent).free
    if free < need_gib * 2**30:
        sys.exit(f"bench: {target.parent} has {free / 2**30:.1f} GiB free; {target.name} and "
                 f"its runs need about {need_gib} GiB (choose another --work)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    shutil.rmtree(target, ignore_errors=True)
    start = time.perf_counter()
    write(target, len(tokenizer))
    tokenizer.save_pretrained(target)
    (target / MARKER).write_text(f"made in {time.perf_counter() - start:.0f} s\n")
    return target


def make_synthetic(work: Path, source: Path) -> Path:
    """The 1.1B-shaped fp32 checkpoint under `work` (`source` gives the tokenizer)."""
    def write(target, vocab_size):
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(synthetic_config(vocab_size),
                                                 dtype=torch.float32)
        model.save_pretrained(target, max_shard_size="1GB")

    return made_once(work / "synthetic-1.1b", source, 10, write)


def make_synthetic_7b(work: Path, source: Path) -> Path:
    """The 7B-shaped bfloat16 checkpoint under `work`, written tensor by tensor."""
    from synthetic_checkpoint import write_checkpoint

    def write(target, vocab_size):
        write_checkpoint(target, synthetic_config(vocab_size, SEVEN_B_SHAPES))

    return made_once(work / "synthetic-7b", source, 32, write)


def make_synthetic_moe(work: Path, source: Path) -> Path:
    """The Qwen3-MoE-shaped bfloat16 checkpoint under `work`, written tensor by tensor."""
    from synthetic_checkpoint import write_checkpoint

    def write(target, vocab_size):
        write_checkpoint(target, synthetic_config(vocab_size, MOE_SHAPES))

    return made_once(work / "synthetic-moe", source, 10, write)


def run_child(config: str, overrides, threads: int, log: Path, env=None):
    """(exit code, peak RSS in bytes, seconds) of one `python -m llmc` child (`env`: more
    environment variables)."""
    argv = [sys.executable, "-m", "llmc", "--config", config, "--log-level", "WARNING"]
    for item in overrides:
        argv += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT), **(env or {})}
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss * 1024, time.perf_counter() - start


def figures_of(model: str, method: str, engine: str, checkpoint_bytes: int, rss: int,
               results: dict) -> dict:
    timings = results["timings"]
    row = {"model": model, "method": method, "engine": results["engine"]["load"],
           "asked": engine, "peak_rss_gib": rss / 2**30, "rss_over_checkpoint":
           rss / checkpoint_bytes, "prune_s": timings["prune_total"],
           "prune_s_per_block": timings["prune_total"] / len(results["sparsity"]["per_block"]),
           "write_s": timings.get("prune_write", 0.0)}
    if "resume_fsync" in timings:  # a run that checkpointed (streamed)
        checkpoint = timings["prune_checkpoint"]
        row.update(checkpoint_s=checkpoint, fsync_s=timings.get("resume_fsync", 0.0),
                   checkpoint_over_rest=checkpoint / (timings["prune_total"] - checkpoint))
    return row


def sensitivity_figures(model: str, method: str, engine: str, checkpoint_bytes: int, rss: int,
                        record: dict, blocks: int) -> dict:
    """A sensitivity run's row: its 'prune' time is the traces' time, 'per block' per probe and
    block."""
    seconds = record["seconds"]
    return {"model": model, "method": method, "engine": engine, "asked": engine,
            "peak_rss_gib": rss / 2**30, "rss_over_checkpoint": rss / checkpoint_bytes,
            "prune_s": seconds, "probes": record["probes"],
            "prune_s_per_block": seconds / record["probes"] / blocks, "write_s": 0.0}


def run_one(model, method, engine, path: Path, size: int, work: Path, threads: int) -> dict:
    save = work / "runs" / f"{model}-{method}-{engine}"
    # A bench killed mid-run leaves a resume state there: a rerun would resume, not time.
    shutil.rmtree(save, ignore_errors=True)
    overrides = [f"model.path={path}", f"model.load={engine}", f"save.save_path={save}",
                 *CALIBRATIONS.get(model, CALIBRATION)]
    config, env = f"configs/sparse/{method}.yml", None
    if method in CONFIG_RUNS:
        config = f"configs/sparse/{CONFIG_RUNS[method][0]}.yml"
        overrides += CONFIG_RUNS[method][1]
    if method in SENSITIVITY_RUNS:
        config, env = "configs/sparse/mixgpt.yml", {"LLMC_FAIL_AT": "plan:allocated"}
        overrides += [SENSITIVITY_RUNS[method], *SENSITIVITY_PROBES]
        if model == "synthetic7b":  # ~6 minutes a probe on 2 cores; memory is per probe
            overrides.append("sparse.mixgpt.sensitivity.max_iter=1")
    log = work / f"{save.name}.log"
    code, rss, seconds = run_child(config, overrides, threads, log, env)
    if env is not None:  # stopped on purpose after the traces: they must be there
        record = save / "sensitivity.json"
        if code == 0 or not record.exists() or "plan:allocated" not in log.read_text():
            sys.exit(f"bench: the {model} {method} {engine} run did not stop after its "
                     f"Hessian traces (exit {code}); see {log}")
        blocks = json.loads((path / "config.json").read_text())["num_hidden_layers"]
        row = sensitivity_figures(model, method, engine, size, rss,
                                  json.loads(record.read_text())["value"], blocks)
    else:
        if code != 0:
            sys.exit(f"bench: the {model} {method} {engine} run failed (exit {code}); "
                     f"see {log}")
        results = json.loads((save / "results.json").read_text())
        row = figures_of(model, method, engine, size, rss, results)
    print(f"  {model} {method} {engine}: {seconds:.0f} s, peak RSS {rss / 2**30:.2f} GiB",
          flush=True)
    shutil.rmtree(save, ignore_errors=True)  # ~5 GB each for the synthetic model
    return {**row, "wall_s": seconds}


def ratios(rows) -> list:
    """Streamed / in-memory prune time per (model, method) measured both ways."""
    out = []
    for row in rows:
        if row["engine"] != "stream":
            continue
        memory = [r for r in rows if r["engine"] == "memory" and
                  (r["model"], r["method"]) == (row["model"], row["method"])]
        if memory:
            out.append({"model": row["model"], "method": row["method"],
                        "stream_over_memory_prune": row["prune_s"] / memory[0]["prune_s"]})
    return out


def print_table(rows, checkpoint_sizes) -> None:
    for model, size in checkpoint_sizes.items():
        print(f"{model}: checkpoint {size / 2**30:.2f} GiB of weights")
    print(f"{'model':13} {'method':10} {'engine':7} {'peak RSS':>9} {'x ckpt':>7} "
          f"{'prune s':>8} {'s/block':>8} {'write s':>8} {'ckpt s':>7} {'fsync s':>8} "
          f"{'ckpt/rest':>9}")
    for r in rows:
        print(f"{r['model']:13} {r['method']:10} {r['engine']:7} {r['peak_rss_gib']:8.2f}G "
              f"{r['rss_over_checkpoint']:7.3f} {r['prune_s']:8.1f} "
              f"{r['prune_s_per_block']:8.2f} {r['write_s']:8.2f} "
              + (f"{r['checkpoint_s']:7.2f} {r['fsync_s']:8.2f} {r['checkpoint_over_rest']:9.3f}"
                 if "checkpoint_s" in r else ""))
    for r in ratios(rows):
        print(f"{r['model']} {r['method']}: streamed / in-memory prune time = "
              f"{r['stream_over_memory_prune']:.3f}")
    for model in dict.fromkeys(r["model"] for r in rows):
        times = {r["method"]: r["prune_s"] / r["probes"] for r in rows
                 if r["model"] == model and "probes" in r and r["engine"] == "memory"}
        if len(times) == 2:
            print(f"{model}: Hessian traces block by block / whole model, time per probe = "
                  f"{times['mixgpt-sensitivity'] / times['mixgpt-sensitivity-whole']:.3f}")


# Without --models/--methods/--engines: both engines of both methods on the built-in model
# (the prune-time ratio), and on the synthetic one both methods streamed plus Wanda in memory
# (today's RSS); a SparseGPT run of the synthetic model in memory would add ~12 minutes on 2
# cores and tell nothing new about memory. About 22 minutes on 2 cores in all.
DEFAULT_RUNS = [("builtin", method, engine) for method in ("wanda", "sparsegpt")
                for engine in ("memory", "stream")] + [
    ("synthetic", "wanda", "memory"), ("synthetic", "wanda", "stream"),
    ("synthetic", "sparsegpt", "stream")]


def planned_runs(models, methods, engines) -> list:
    """(model, method, engine) triples: DEFAULT_RUNS, or every combination of the lists given
    (a list not given keeps its default values)."""
    if not (models or methods or engines):
        return list(DEFAULT_RUNS)
    return [(model, method, engine)
            for model in (models or "builtin,synthetic").split(",")
            for method in (methods or "wanda,sparsegpt").split(",")
            for engine in (engines or "memory,stream").split(",")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="comma-separated: builtin, synthetic, synthetic7b, "
                        "synthetic-moe")
    parser.add_argument("--methods", help="comma-separated: wanda, sparsegpt, ..., "
                        "ria-realloc, mixgpt-sensitivity, mixgpt-sensitivity-whole")
    parser.add_argument("--engines", help="comma-separated: memory, stream")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=os.environ.get("LLMC_BENCH_DIR", "/tmp/llmc-bench"))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    runs = planned_runs(args.models, args.methods, args.engines)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = builtin_dir()
    paths = {"builtin": source}
    models = list(dict.fromkeys(model for model, _, _ in runs))
    if "synthetic" in models:
        paths["synthetic"] = make_synthetic(work, source)
    if "synthetic7b" in models:
        paths["synthetic7b"] = make_synthetic_7b(work, source)
    if "synthetic-moe" in models:
        paths["synthetic-moe"] = make_synthetic_moe(work, source)
    sizes = {model: weight_bytes(paths[model]) for model in models}
    rows = [run_one(model, method, engine, paths[model], sizes[model], work, args.threads)
            for model, method, engine in runs]
    print_table(rows, sizes)
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint_bytes": sizes, "runs": rows,
                                               "ratios": ratios(rows)}, indent=2))


if __name__ == "__main__":
    main()
