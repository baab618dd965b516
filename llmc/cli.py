"""`python -m llmc --config FILE.yml [--set key.path=value ...]` (also the `llmc` command).

Every failure ends as one `llmc: error: ...` line on stderr and an exit code:
2 what the user can fix: the input (config, --set, the command line, a model or data file: an
LlmcError, or argparse) or the machine (out of memory, disk full, permission); 1 a bug in llmc
(traceback saved to a file), 130 Ctrl-C (SIGINT), 143 SIGTERM (each with one `llmc: interrupted (SIG...)` line; the
run's staging directory removed and its lock released, docs/outputs.md).
"""
import argparse
import signal
import sys
import threading

from loguru import logger

from .errors import LlmcError
from .failure import bug_report, environment_failure, thread_failure

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")  # loguru's


class _Once(argparse.Action):
    """An option that may be given once: with the last one silently winning, `--config a.yml
    --config b.yml` would run b alone."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = f"_{self.dest}_given"
        if getattr(namespace, given, False):
            parser.error(f"argument {option_string}: given twice ({getattr(namespace, self.dest)}"
                         f" and {values}); give it once")
        setattr(namespace, given, True)
        setattr(namespace, self.dest, values)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="llmc", description="Prune an LLM blockwise from a "
                                     "YAML config (see docs/config.md).")
    parser.add_argument("--config", required=True, action=_Once, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key, e.g. --set sparse.weight.sparsity=0.6 "
                             "(repeatable; the value is parsed as YAML)")
    parser.add_argument("--log-level", default="INFO", action=_Once, type=str.upper,
                        choices=LOG_LEVELS, metavar="LEVEL",
                        help=f"one of {', '.join(LOG_LEVELS)}, any case (default INFO)")
    return parser.parse_args(argv)


def _fail(message: str, code: int) -> int:
    # One line whatever the message holds, so scripts can grep for it.
    print(f"llmc: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


class Terminated(BaseException):
    """SIGTERM, raised where the run is so that its cleanup runs as for SIGINT (a
    BaseException, like KeyboardInterrupt, so no `except Exception` swallows it)."""


def _raise_terminated(signum, frame):
    # Once: a second SIGTERM while the cleanup runs must not cut it short (SIGKILL still does).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as done:  # argparse printed its usage line and one `llmc: error:` line
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    threading.excepthook, previous_hook = thread_failure, threading.excepthook
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        from .config import load_config

        cfg = load_config(args.config, args.overrides)
        from .pipeline import run

        run(cfg)
    except LlmcError as err:
        return _fail(str(err), 2)
    except KeyboardInterrupt:
        print("llmc: interrupted (SIGINT)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("llmc: interrupted (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as err:  # not the input: the machine, or a bug in llmc
        known = environment_failure(err)  # the user can act on it, as on bad input: exit 2
        if known:
            return _fail(known, 2)
        return _fail(bug_report(err, args.log_level in ("TRACE", "DEBUG")), 1)
    finally:
        threading.excepthook = previous_hook
        if in_main_thread:  # as it was (pytest runs main in-process)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0
