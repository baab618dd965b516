"""`python -m llmc bench-model DIR [DIR ...] [--json FILE]` (or `llmc bench-model`): the first
DIR is the baseline; every figure of the others is also given as a ratio to it."""
import dataclasses
import re
import sys
from pathlib import Path

import torch
from loguru import logger

from ..errors import LlmcError
from ..strict_json import dumps_strict
from ..subcommand import SubcommandParser
from .compare import markdown, over_rounds, ratios
from .measure import Settings, measure


def parse_args(argv):
    parser = SubcommandParser("bench-model", description="Prefill and decode tokens/s, peak "
                              "memory, parameters and checkpoint bytes of saved models, each as "
                              "a ratio to the first.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="saved model directories (the "
                        "first is the baseline, usually the dense model)")
    parser.add_argument("--prompt", type=int, default=Settings.prompt, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=Settings.new_tokens,
                        help="greedy tokens generated after the prompt")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=Settings.repeats,
                        help="timed runs per figure after one warm-up (the median is kept)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every model this many times in turn (A B C, A B C, ...) "
                             "and keep each figure's median over the rounds: a drift of the "
                             "machine then falls on all models alike")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if min(args.prompt, args.new_tokens, args.repeats, args.rounds, *args.batch) < 1:
        parser.error("--prompt, --new-tokens, --repeats, --rounds and --batch must be >= 1")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device {args.device}: give auto, cpu, cuda or cuda:N")
    return args


def bench(argv) -> int:
    from ..runner import resolve_device

    args = parse_args(argv)
    dirs = [Path(d) for d in args.dirs]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise LlmcError(f"bench-model: {missing[0]} is not a directory; give saved model "
                        "directories (e.g. save_path/transformed_model)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    settings = Settings(args.prompt, args.new_tokens, list(args.batch), args.repeats)
    record, table = compare_models(dirs, device, settings, args.rounds)
    sys.stdout.write(table + "\n")
    if args.json:
        Path(args.json).write_text(dumps_strict(record))
    return 0


def compare_models(dirs, device, settings: Settings, rounds: int = 1):
    """(record, markdown table) of the models at `dirs`, measured one after the other in this
    process (`rounds` times in turn, medians kept), each figure also as a ratio to the first
    (`llmc bench-model`, and a run's save.bench)."""
    measured = [[] for _ in dirs]
    for round_index in range(rounds):
        for directory, runs in zip(dirs, measured):
            logger.info(f"measuring {directory} on {device}"
                        f"{f' (round {round_index + 1} of {rounds})' if rounds > 1 else ''}")
            runs.append(measure(directory, device, settings))
    figures = [over_rounds(runs, settings.batches) for runs in measured]
    where = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} thread(s)")
    header = (f"on {where}; prompt {settings.prompt}, {settings.new_tokens} new tokens, "
              f"median of {settings.repeats}"
              f"{f', then of {rounds} rounds over the models in turn' if rounds > 1 else ''}; "
              f"ratios to {dirs[0]}")
    record = {"device": where, "settings": dataclasses.asdict(settings), "rounds": rounds,
              "models": [{**f, "ratios": r}
                         for f, r in zip(figures, ratios(figures, settings.batches))]}
    return record, markdown(figures, settings.batches, header)
