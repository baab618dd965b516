"""One row per run: what was pruned how, then every perplexity and task metric (dense and
pruned), what a structured method removed (parameters and checkpoint bytes before and after),
what the saved model buys against the dense one (save.bench's ratios: checkpoint,
memory, prefill and decode speed), the sparsity reached and the prune time; as markdown or
CSV."""
import csv
import io
from typing import List

from .runs import Run, bench_ratios, identity, is_number, measurements, structure_figures

IDENTITY = ["structure", "method", "base", "steps", "sparsity", "type", "wbits", "model",
            "calibration"]
TAIL = ["achieved sparsity", "prune s"]
STDERR = "_stderr"


def rows(runs: List[Run]) -> List[dict]:
    """{column: value} per run; a figure a run lacks is absent from its row. A measured figure
    is `<name>` after pruning and `<name> (dense)` before it."""
    table = []
    for run in runs:
        row = {"run": str(run.path), **identity(run.results)}
        for column, value in run.dense.items():
            row[f"{column} (dense)"] = value
        row.update(measurements(run.results, "transformed"))
        row.update(structure_figures(run.results))  # what sparse.structure removed
        row.update(bench_ratios(run.results))  # what the pruned model buys (save.bench)
        row["achieved sparsity"] = (run.results.get("sparsity") or {}).get("overall")
        row["prune s"] = (run.results.get("timings") or {}).get("prune_total")
        table.append(row)
    return table


def columns(table: List[dict]) -> List[str]:
    """run and the identity first, the measured figures in order of first appearance (each
    dense column before its pruned one), then the sparsity reached and the prune time."""
    measured = []
    for row in table:
        for column in row:
            if column in IDENTITY or column in TAIL or column == "run":
                continue
            plain = column.removesuffix(" (dense)")
            for name in (f"{plain} (dense)", plain):
                if name not in measured:
                    measured.append(name)
    present = {column for row in table for column in row}
    # a report of runs without a structured method reads as before it existed
    identity = [c for c in IDENTITY if c != "structure" or any(row.get(c) for row in table)]
    return ["run", *identity, *[c for c in measured if c in present], *TAIL]


def _cell(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def markdown(table: List[dict]) -> str:
    """A markdown table; a metric's standard error is shown as ± beside it, not as a column."""
    shown = [c for c in columns(table) if not _is_stderr(c)]
    lines = ["| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    for row in table:
        cells = []
        for column in shown:
            cell = _cell(row.get(column))
            stderr = row.get(_stderr_column(column))
            if cell and is_number(stderr):
                cell += f" ± {stderr:.4f}"
            cells.append(cell.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_csv(table: List[dict]) -> str:
    out = io.StringIO()
    fields = columns(table)
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items() if k in fields})
    return out.getvalue()


def _is_stderr(column: str) -> bool:
    return column.removesuffix(" (dense)").endswith(STDERR)


def _stderr_column(column: str) -> str:
    if column.endswith(" (dense)"):
        return column.removesuffix(" (dense)") + STDERR + " (dense)"
    return column + STDERR
