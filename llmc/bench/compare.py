"""Saved models side by side: each figure of llmc.bench.measure as a ratio to the first model
(the baseline, usually the dense one), measured in the same process; a markdown table and the
results as JSON."""
import statistics
from typing import Dict, List

# (column, key in the figures, higher is better); the speeds per batch size are added per run
SIZE_COLUMNS = [("parameters", "parameters"), ("non-zero", "nonzero_parameters"),
                ("checkpoint MB", "checkpoint_bytes"), ("peak memory MB", "peak_memory_bytes")]
MB = 2 ** 20


def speed_keys(batches: List[int]) -> List[str]:
    return ([f"prefill_tokens_per_s_bs{b}" for b in batches]
            + [f"decode_tokens_per_s_bs{b}" for b in batches])


def over_rounds(rounds: List[Dict[str, object]], batches: List[int]) -> Dict[str, object]:
    """One model's figures from its measurements in successive rounds (each round measures
    every model once, in turn, so a drift of the machine falls on all of them alike): the
    median of each speed, peak memory and timing over the rounds, every round's value kept
    under `per_round` (a kernel row that failed in a round has one value fewer)."""
    if len(rounds) == 1:
        return rounds[0]
    keys = speed_keys(batches) + ["peak_memory_bytes"]
    combined = {**rounds[0], "rounds": len(rounds), "per_round": {}}
    for key in keys:
        values = [r.get(key) for r in rounds]
        combined["per_round"][key] = values
        known = [v for v in values if v is not None]
        combined[key] = statistics.median(known) if known else None
    combined["seconds"] = {key: statistics.median(r["seconds"][key] for r in rounds)
                           for key in rounds[0]["seconds"]}
    return combined


def ratios(figures: List[Dict[str, object]], batches: List[int]) -> List[Dict[str, float]]:
    """{key: model's figure / baseline's figure} for every size and speed figure (None where
    either is missing or the baseline's is 0)."""
    base = figures[0]
    keys = [key for _, key in SIZE_COLUMNS] + speed_keys(batches)
    out = []
    for model in figures:
        out.append({key: (model[key] / base[key]
                          if model.get(key) is not None and base.get(key) else None)
                    for key in keys})
    return out


def _cell(value, ratio, scale=1.0) -> str:
    if value is None:
        return ""
    shown = f"{value / scale:,.1f}" if scale != 1.0 or isinstance(value, float) else f"{value:,}"
    return shown if ratio is None else f"{shown} ({ratio:.2f}x)"


def label(model) -> str:
    """The model's path, and for a row on the 2:4 kernels which ones and how many Linears."""
    if "kernels" not in model:
        return model["path"]
    return (f"{model['path']} [{model['kernels']} kernels, {model['kernel_linears']} of "
            f"{model['two_four_linears']} 2:4 Linears]")


def markdown(figures, batches, header: str) -> str:
    """One row per model: sizes, then tokens/s per batch size, each with its ratio to the first
    row."""
    relative = ratios(figures, batches)
    speeds = [(f"prefill tok/s bs{b}", f"prefill_tokens_per_s_bs{b}") for b in batches]
    speeds += [(f"decode tok/s bs{b}", f"decode_tokens_per_s_bs{b}") for b in batches]
    columns = SIZE_COLUMNS + speeds
    lines = [header, "", "| model | " + " | ".join(name for name, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for model, ratio in zip(figures, relative):
        cells = [_cell(model.get(key), ratio[key], MB if name.endswith("MB") else 1.0)
                 for name, key in columns]
        lines.append(f"| {label(model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
