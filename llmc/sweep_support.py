"""What the shell sweeps (scripts/sweep_*.sh) ask of llmc, in one process each:

    python -m llmc.sweep_support methods
        the registered methods' names, one line (sweep_methods.sh's default METHODS; not
        `none`, which prunes no weight)
    python -m llmc.sweep_support check CONFIG [--set KEY=VALUE ...] [--each KEY=VALUE ...]
        validates CONFIG with the common --set overrides plus each --each one in turn, so that a
        typo fails before the first run rather than hours in; prints the eval_pos for the runs
        after the first (the dense figures measured once: `llmc report` fills them in), or
        nothing when there is no pretrain position to drop.

Failures end as one `llmc: error:` line, exit 2, as the CLI's do.
"""
import argparse
import sys


def check(config, common, each) -> str:
    from .config import load_config

    cfg = load_config(config, common)
    for override in each:
        try:
            load_config(config, [*common, override])
        except Exception as err:
            raise type(err)(f"with {override}: {err}") from None
    later = [p for p in cfg.eval.eval_pos if p != "pretrain"]
    if later == cfg.eval.eval_pos:
        return ""
    return "[" + ", ".join(later) + "]"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmc.sweep_support")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("methods")
    checking = commands.add_parser("check")
    checking.add_argument("config")
    checking.add_argument("--set", action="append", default=[], dest="common")
    checking.add_argument("--each", action="append", default=[])
    # the runs' other options (--log-level) are llmc's to check, not this one's
    args, _ = parser.parse_known_args(argv)
    from .cli import _fail
    from .errors import LlmcError

    try:
        if args.command == "methods":
            from .registry import METHODS
            print(" ".join(sorted(name for name in METHODS if METHODS[name].PRUNES)))
        else:
            print(check(args.config, args.common, args.each))
    except LlmcError as err:
        return _fail(str(err), 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
