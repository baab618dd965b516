"""The report's pictures (matplotlib, the `[plot]` extra): perplexity and accuracy against the
sparsity reached, one line per method, one panel per dataset or task, the dense figure as a
dashed line; the sparsity of each decoder layer, one line per run; and perplexity against the
decode speed-up save.bench measured, one point per run; perplexity against the fraction of
parameters a structured method removed, one line per method."""
from pathlib import Path
from typing import Dict, List, Tuple

from .runs import (DECODE_SPEEDUP, Run, bench_ratios, is_number, layer_sparsity, measurements,
                   structure_figures)

PPL_PLOT = "ppl_vs_sparsity.png"
ACCURACY_PLOT = "accuracy_vs_sparsity.png"
LAYER_PLOT = "layer_sparsity.png"
SPEED_PLOT = "ppl_vs_decode_speedup.png"
REMOVED_PLOT = "ppl_vs_params_removed.png"
Series = Dict[str, List[Tuple[float, float]]]  # {method label: [(x, y)]}
ACCURACY = "acc"  # the task metric plotted (every paper's zero-shot table reports it)


def pyplot():
    """matplotlib.pyplot without a display, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_plots(runs: List[Run], directory) -> List[Path]:
    """The plots of `runs` in `directory` (created); the paths written. The caller checks that
    matplotlib is there (pyplot())."""
    plt = pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    datasets = {f"{dataset} ppl" for run in runs
                for position in (run.results.get("ppl") or {}).values()
                for dataset in position or {}}
    panels = _panels(runs, datasets.__contains__, " ppl")  # not a task's ppl (cloze's)
    if panels:
        written.append(_against_sparsity(plt, panels, "perplexity", directory / PPL_PLOT,
                                         log_scale=True))
    panels = _panels(runs, lambda column: column.endswith(f" {ACCURACY}"), f" {ACCURACY}")
    if panels:
        written.append(_against_sparsity(plt, panels, "accuracy", directory / ACCURACY_PLOT))
    if any(layer_sparsity(run.results) for run in runs):
        written.append(_layers(plt, runs, directory / LAYER_PLOT))
    removed = _against_removed(runs, datasets)
    if removed:
        written.append(_against_sparsity(plt, removed, "perplexity", directory / REMOVED_PLOT,
                                         log_scale=True,
                                         xlabel="fraction of parameters removed (structure)"))
    speed = _against_speedup(runs, datasets)
    if speed:
        written.append(_speed(plt, speed, directory / SPEED_PLOT))
    return written


def _against_speedup(runs, datasets) -> Dict[str, Series]:
    """{dataset: {method label: [(decode speed-up at batch 1, perplexity)]}} of the runs that
    measured what they buy (save.bench)."""
    panels: Dict[str, Series] = {}
    for run in runs:
        speedup = bench_ratios(run.results).get(DECODE_SPEEDUP)
        for column, value in measurements(run.results, "transformed").items():
            if column in datasets and is_number(value) and speedup is not None:
                series = panels.setdefault(column.removesuffix(" ppl"), {})
                series.setdefault(run.label, []).append((speedup, value))
    return panels


def _against_removed(runs, datasets) -> Dict[str, Tuple[Series, List[float]]]:
    """{dataset: ({method label: [(fraction of parameters removed, perplexity)]}, dense
    values)} of the runs a structured method made smaller (sparse.structure)."""
    panels: Dict[str, Tuple[Series, List[float]]] = {}
    for run in runs:
        removed = structure_figures(run.results).get("params removed")
        if removed is None:
            continue
        for column, value in measurements(run.results, "transformed").items():
            if column in datasets and is_number(value):
                series, dense = panels.setdefault(column.removesuffix(" ppl"), ({}, []))
                series.setdefault(run.label, []).append((removed, value))
                if is_number(run.dense.get(column)):
                    dense.append(run.dense[column])
    return panels


def _speed(plt, panels, path) -> Path:
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.0), squeeze=False)
    for ax, (name, series) in zip(axes[0], sorted(panels.items())):
        for label, points in sorted(series.items()):
            ax.scatter([x for x, _ in points], [y for _, y in points], label=label)
        ax.axvline(1.0, color="gray", linestyle="--", linewidth=1, label="dense speed")
        ax.set_yscale("log")
        _label(ax, name, "decode speed-up at batch 1 (x dense, save.bench)", "perplexity")
    return _save(plt, fig, path)



def _panels(runs, wanted, suffix) -> Dict[str, Tuple[Series, List[float]]]:
    """{dataset or task: ({method label: [(sparsity reached, value)]}, dense values)}."""
    panels: Dict[str, Tuple[Series, List[float]]] = {}
    for run in runs:
        reached = (run.results.get("sparsity") or {}).get("overall")
        for column, value in measurements(run.results, "transformed").items():
            if wanted(column) and is_number(value) and is_number(reached):
                series, _ = panels.setdefault(column.removesuffix(suffix), ({}, []))
                series.setdefault(run.label, []).append((reached, value))
        for column, value in run.dense.items():
            if wanted(column) and is_number(value) and column.removesuffix(suffix) in panels:
                panels[column.removesuffix(suffix)][1].append(value)
    return panels


def _against_sparsity(plt, panels, ylabel, path, log_scale=False,
                      xlabel="sparsity reached (decoder Linears)") -> Path:
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.0), squeeze=False)
    for ax, (name, (series, dense)) in zip(axes[0], sorted(panels.items())):
        for label, points in sorted(series.items()):
            points.sort()
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=label)
        for value in sorted(set(dense)):
            ax.axhline(value, color="gray", linestyle="--", linewidth=1,
                       label="dense" if value == min(dense) else None)
        if log_scale:
            ax.set_yscale("log")
        _label(ax, name, xlabel, ylabel)
    return _save(plt, fig, path)


def _layers(plt, runs, path) -> Path:
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for run in runs:
        per_block = layer_sparsity(run.results)
        if per_block:
            ax.plot(range(len(per_block)), per_block, marker=".", label=f"{run.label} "
                    f"({run.path.name})")
    _label(ax, "sparsity per layer", "decoder layer", "sparsity (fraction of zeros)")
    return _save(plt, fig, path)


def _label(ax, title, xlabel, ylabel):
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(plt, fig, path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
