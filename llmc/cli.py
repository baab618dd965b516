"""`python -m llmc --config FILE.yml [--set key.path=value ...]` (also the `llmc` command)."""
import argparse
import signal
import sys
import threading

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


class Terminated(BaseException):
    """SIGTERM, raised where the run is so that its cleanup runs as for SIGINT (a
    BaseException, like KeyboardInterrupt, so no `except Exception` swallows it)."""


def _raise_terminated(signum, frame):
    # Once: a second SIGTERM while the cleanup runs must not cut it short (SIGKILL still does).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def main(argv=None) -> int:
    args = parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level=args.log_level.upper())
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        from .config import load_config

        cfg = load_config(args.config, args.overrides)
        from .pipeline import run

        run(cfg)
    except LlmcError as err:
        print(f"llmc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmc: interrupted (SIGINT)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("llmc: interrupted (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main_thread:  # as it was (pytest runs main in-process)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0
