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
from . import semi_structured
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
    parser.add_argument("--dtype", default=Settings.dtype,
                        choices=["auto", "float16", "bfloat16", "float32"],
                        help="load every model in this dtype (auto: as saved); the 2:4 kernels "
                             "need float16 or bfloat16 (CUTLASS also float32)")
    parser.add_argument("--two-four-kernels", default=Settings.two_four_kernels,
                        choices=list(semi_structured.CHOICES),
                        help="also measure each 2:4 model with its 2:4 Linears on torch's "
                             "semi-structured sparse kernels, as a row of its own: auto (on "
                             "CUDA), on (CUDA required), off")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every model this many times in turn, each round starting "
                             "one model further on (A B C, B C A, ...), and keep each figure's "
                             "median over the rounds: a drift of the machine, or a cost of "
                             "coming first, then falls on all models alike")
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
    settings = Settings(args.prompt, args.new_tokens, list(args.batch), args.repeats,
                        dtype=args.dtype, two_four_kernels=args.two_four_kernels)
    convert = semi_structured.kernels_for(settings.two_four_kernels, device)
    record, table = compare_models(dirs, device, settings, args.rounds, convert)
    sys.stdout.write(table + "\n")
    if args.json:
        Path(args.json).write_text(dumps_strict(record))
    return 0


def compare_models(dirs, device, settings: Settings, rounds: int = 1, convert=None):
    """(record, markdown table) of the models at `dirs`, measured one after the other in this
    process (`rounds` times in turn, medians kept), each figure also as a ratio to the first
    (`llmc bench-model`, and a run's save.bench). With `convert` (semi_structured.kernels_for),
    a model with 2:4 Linears is measured a second time, right after itself, on the kernels."""
    rows, measured = [], []
    for directory in dirs:  # round 1 finds the rows: each model, then its kernel row if any
        rows.append((directory, None))
        measured.append([_measure(directory, None, device, settings, 0, rounds)])
        if convert is None or not measured[-1][0]["two_four_linears"]:
            continue
        on_kernels = _measured_or_reason(directory, convert, device, settings, 0, rounds)
        if isinstance(on_kernels, str):
            logger.warning(f"{directory} on the 2:4 kernels failed, no row for it: {on_kernels}")
            measured[-1][0]["kernel_error"] = on_kernels
            continue
        rows.append((directory, convert))
        measured.append([on_kernels])
    for round_index in range(1, rounds):
        for index in _rotated(len(rows), round_index):
            figures = _measured_or_reason(*rows[index], device, settings, round_index, rounds)
            if isinstance(figures, str):  # a kernel row: the medians of its other rounds
                logger.warning(f"{rows[index][0]} on the 2:4 kernels failed in round "
                               f"{round_index + 1}, which its row leaves out: {figures}")
            else:
                measured[index].append(figures)
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


def _measured_or_reason(directory, convert, device, settings, round_index, rounds):
    """The figures of `directory` (on the 2:4 kernels `convert` makes, if given); for a kernel
    row, why they could not be measured instead (a kernel this GPU lacks, a shape it refuses
    mid-run). A plain model's failure is the bench's own and is raised."""
    try:
        return _measure(directory, convert, device, settings, round_index, rounds)
    except (RuntimeError, NotImplementedError, TypeError) as err:
        if convert is None:
            raise
        return " ".join(str(err).split())[:300]


def _rotated(count: int, round_index: int):
    """The order of the rows in a round: each round starts one row further on (A B C, B C A,
    C A B, ...), so that whatever slows the first model of a round falls on every model in turn
    (on the 2-core VM, two dense copies and a pruned model in a fixed order: the first had the
    lowest prefill speed in 6 rounds of 6, whichever copy came first)."""
    return [(round_index + offset) % count for offset in range(count)]


def _measure(directory, convert, device, settings: Settings, round_index: int, rounds: int):
    logger.info(f"measuring {directory} on {device}"
                f"{' with its 2:4 Linears on sparse kernels' if convert else ''}"
                f"{f' (round {round_index + 1} of {rounds})' if rounds > 1 else ''}")
    return measure(directory, device, settings, convert)
