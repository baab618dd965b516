"""`python -m llmc --config FILE.yml [--set key.path=value ...]` (also the `llmc` command)."""
import argparse
import sys

from loguru import logger

from .errors import LlmcError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="llmc", description="Prune an LLM blockwise from a "
                                     "YAML config (see docs/config.md).")
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key, e.g. --set sparse.weight.sparsity=0.6 "
                             "(repeatable; the value is parsed as YAML)")
    parser.add_argument("--log-level", default="INFO", help="loguru level (default INFO)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    try:
        from .config import load_config

        cfg = load_config(args.config, args.overrides)
        from .pipeline import run

        run(cfg)
    except LlmcError as err:
        print(f"llmc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmc: interrupted", file=sys.stderr)
        return 130
    return 0
