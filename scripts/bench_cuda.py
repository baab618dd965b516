"""What 2:4 buys on a GPU, in one command for a lent GPU machine (no network, nothing cached):

    python scripts/bench_cuda.py --work /tmp/llmc-cuda [--shape 7b|1.1b|tiny] [--rounds N]
                                 [--device cuda] [--json FILE]

1. A synthetic Llama checkpoint of the shape's dimensions (7b: Llama-2-7B's; 1.1b: TinyLlama's;
   tiny: a few MB, for a dry run on a CPU), bfloat16, written tensor by tensor
   (scripts/synthetic_checkpoint.py): no hub, no tokenizer.
2. Wanda at 50% and at 2:4 of it, through llmc.prune on the device, calibrated on seeded random
   token windows (a model's speed does not depend on which weights were kept), each saved with
   save_pretrained.
3. `llmc bench-model` over the dense, 50% and 2:4 models in bfloat16: on CUDA the 2:4 model is
   measured once more with its Linears on torch's semi-structured sparse kernels (cuSPARSELt, or
   CUTLASS), each figure a ratio to the dense model (docs/performance.md).

Steps 1 and 2 are skipped for a model already under --work. Needs llmc's own dependencies;
the GPU image lacks loguru alone (docs/performance.md says how to carry its wheel)."""
import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_memory import SEVEN_B_SHAPES, SYNTHETIC_SHAPES, synthetic_config  # noqa: E402
from synthetic_checkpoint import write_checkpoint  # noqa: E402

TINY_SHAPES = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                   tie_word_embeddings=False)
SHAPES = {"7b": SEVEN_B_SHAPES, "1.1b": SYNTHETIC_SHAPES, "tiny": TINY_SHAPES}
VOCAB = 32000  # Llama-2's
SPARSITIES = {"wanda-50": {"sparsity": 0.5}, "wanda-2-4": {"sparsity_type": "2:4"}}
DONE = "llmc-bench-cuda-complete"


def made(target: Path, write) -> Path:
    """`target`, written by `write(target)` unless an earlier run completed it."""
    if not (target / DONE).exists():
        shutil.rmtree(target, ignore_errors=True)
        start = time.perf_counter()
        write(target)
        (target / DONE).write_text(f"made in {time.perf_counter() - start:.0f} s\n")
    return target


def dense_checkpoint(work: Path, shape: str) -> Path:
    config = synthetic_config(VOCAB, SHAPES[shape])
    return made(work / f"dense-{shape}", lambda target: write_checkpoint(target, config))


def pruned(work: Path, dense: Path, name: str, device: torch.device, windows: int,
           seq_len: int) -> Path:
    """`dense` pruned by Wanda at SPARSITIES[name] on `device`, saved as a plain HF directory."""
    def write(target):
        from transformers import AutoModelForCausalLM

        import llmc

        model = AutoModelForCausalLM.from_pretrained(dense, dtype=torch.bfloat16).to(device)
        ids = torch.randint(0, VOCAB, (windows, seq_len),
                            generator=torch.Generator().manual_seed(0))
        config = {"base": {"device": device.type}, "calib": {"seq_len": seq_len},
                  "sparse": {"method": "Wanda", "weight": SPARSITIES[name]}}
        llmc.prune(model, None, config, calibration=ids)
        model.save_pretrained(target)

    return made(work / f"{name}-{dense.name.removeprefix('dense-')}", write)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=16, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=512, help="calibration window tokens")
    parser.add_argument("--bench", default="", help="more arguments for llmc bench-model, as "
                        "one string (e.g. --bench='--prompt 128 --batch 1')")
    parser.add_argument("--json", type=Path, help="bench-model's figures as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    dense = dense_checkpoint(args.work, args.shape)
    models = [dense] + [pruned(args.work, dense, name, device, args.windows, args.seq_len)
                        for name in SPARSITIES]
    from llmc.cli import main as llmc_main

    bench = ["bench-model", *map(str, models), "--dtype", "bfloat16", "--device", args.device,
             "--rounds", str(args.rounds), "--repeats", str(args.repeats),
             *shlex.split(args.bench)]
    if args.json:
        bench += ["--json", str(args.json)]
    return llmc_main(bench)


if __name__ == "__main__":
    sys.exit(main())
