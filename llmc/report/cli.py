"""`python -m llmc report SAVE_DIR... [--csv] [--plots DIR | --no-plots]` (or `llmc report`).

Prints one table of the runs found under the given directories (their results.json) and, with
matplotlib installed (`pip install -e ".[plot]"`), writes the plots into --plots."""
import sys
from pathlib import Path

from loguru import logger

from ..errors import LlmcError
from ..subcommand import SubcommandParser
from .plots import pyplot, write_plots
from .runs import find_runs
from .table import markdown, rows, to_csv

PLOTS_DIR = "llmc_report"


def parse_args(argv):
    parser = SubcommandParser("report", description="Compare finished runs: "
                     "one table (markdown, or CSV) and plots.")
    parser.add_argument("paths", nargs="+", metavar="SAVE_DIR",
                        help="save paths of runs, or directories holding them (searched "
                             "recursively for results.json)")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of markdown")
    parser.add_argument("--plots", default=PLOTS_DIR, metavar="DIR",
                        help=f"where the plots go (default: {PLOTS_DIR})")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")
    return parser.parse_args(argv)


def report(argv) -> int:
    args = parse_args(argv)
    if not args.no_plots:
        _check_plots_dir(Path(args.plots))
    runs = find_runs(args.paths)
    table = rows(runs)
    sys.stdout.write(to_csv(table) if args.csv else markdown(table) + "\n")
    if args.no_plots:
        return 0
    if pyplot() is None:
        logger.info("no plots: matplotlib is not installed (pip install -e \".[plot]\")")
        return 0
    for path in write_plots(runs, args.plots):
        logger.info(f"wrote {path}")
    return 0


def _check_plots_dir(directory: Path) -> None:
    """--plots must be a directory or a path one can be made at: a file on the way is one
    error line before any work, not a traceback after the table."""
    for path in (directory, *directory.parents):
        if path.exists():
            if not path.is_dir():
                raise LlmcError(f"report: --plots {directory}: {path} is a file, not a "
                                "directory; choose another directory, or --no-plots")
            return
