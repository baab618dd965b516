"""`python -m llmc --config FILE.yml [--set key.path=value ...]` (also the `llmc` command),
`python -m llmc report SAVE_DIR...` to compare finished runs (llmc.report), and
`python -m llmc bench-model DIR...` to measure what saved models buy (llmc.bench).

Every failure ends as one `llmc: error: ...` line on stderr and an exit code:
2 what the user can fix: the input (config, --set, the command line, a model or data file: an
LlmcError, or argparse) or the machine (out of memory, disk full, permission); 1 a bug in llmc
(traceback saved to a file), 130 Ctrl-C (SIGINT), 143 SIGTERM (each with one `llmc: interrupted (SIG...)` line; the
run's staging directory removed and its lock released, docs/outputs.md).

Under torchrun (docs/scaling.md) rank 0 logs at the chosen level and the other ranks at WARNING,
without progress bars. A rank that fails publishes its line before it exits; the others, whose
collectives then fail (or whom torchrun stops with SIGTERM), print that rank's line and code.
"""
import argparse
import contextlib
import signal
import sys
import threading

from loguru import logger

from . import distributed
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
                                     "YAML config (see docs/config.md). `llmc report SAVE_DIR...` "
                                     "compares finished runs.")
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


def _outcome(err: BaseException, show_traceback: bool):
    """(line, exit code) for a run that ended with `err`; None for an interruption."""
    if isinstance(err, LlmcError):
        return str(err), 2
    if isinstance(err, (KeyboardInterrupt, Terminated)):
        return None
    known = environment_failure(err)  # the user can act on it, as on bad input: exit 2
    if known:
        return known, 2
    return bug_report(err, show_traceback), 1


def _report(err: BaseException, show_traceback: bool) -> int:
    """Print the one line for `err` and return the exit code; under torchrun a rank whose peer
    failed first reports the peer's line (its own is a consequence), and a rank that failed
    first publishes its line for the others."""
    world = distributed.world()
    if world.distributed and isinstance(err, (distributed.PeerLost, Terminated)):
        peer = world.peer_failure()
        if peer is not None:
            return _fail(*peer)
        lost = world.lost_ranks()
        if lost:  # killed before it could say why: no line of its own to report
            ranks = ", ".join(map(str, lost))
            return _fail(f"rank {world.rank}: rank {ranks} ended without a word (killed by a "
                         "signal: out of memory, or SIGKILL), so this run stopped with it; "
                         "nothing was committed; rerun the same command (a streamed run "
                         "resumes from its last finished block)", 2)
    outcome = _outcome(err, show_traceback)
    if outcome is None:
        name = "SIGINT" if isinstance(err, KeyboardInterrupt) else "SIGTERM"
        print(f"llmc: interrupted ({name})", file=sys.stderr)
        return 128 + (signal.SIGINT if name == "SIGINT" else signal.SIGTERM)
    line, code = outcome
    if world.distributed:
        line = line if line.startswith(f"rank {world.rank}:") else f"rank {world.rank}: {line}"
        world.publish_failure(" ".join(line.split()), code)
    return _fail(line, code)


def _quiet_follower() -> str:
    """Under torchrun the ranks other than 0 log warnings only and draw no progress bars (every
    tqdm bar, transformers' too, whenever tqdm was imported). Returns this rank's log level."""
    if distributed.env_rank() == 0:
        return ""
    from functools import partialmethod

    import tqdm.std

    tqdm.std.tqdm.__init__ = partialmethod(tqdm.std.tqdm.__init__, disable=True)
    return "WARNING"


class Terminated(BaseException):
    """SIGTERM, raised where the run is so that its cleanup runs as for SIGINT (a
    BaseException, like KeyboardInterrupt, so no `except Exception` swallows it)."""


def _raise_terminated(signum, frame):
    # Once: a second SIGTERM while the cleanup runs must not cut it short (SIGKILL still does).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextlib.contextmanager
def _sigterm_held(in_main_thread: bool):
    """Under torchrun, a SIGTERM that arrives while the config is read waits until it is read:
    torchrun stops every rank once one exits, and when the config is bad the rank that read it
    first must not make the slower ones print "interrupted" instead of the config's own line."""
    if not (in_main_thread and distributed.env_world_size() > 1):
        yield
        return
    arrived = []
    signal.signal(signal.SIGTERM, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, _raise_terminated)
    if arrived:
        raise Terminated()


def subcommand(name: str, argv) -> int:
    """`llmc report ...` (llmc.report.cli) or `llmc bench-model ...` (llmc.bench.cli): their
    failures end as the run's do, in one line."""
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="{message}")
    try:
        if name == "report":
            from .report.cli import report as command
        else:
            from .bench.cli import bench as command

        return command(argv)
    except SystemExit as done:  # argparse's usage line and error, or --help
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    except (Exception, KeyboardInterrupt) as err:
        outcome = _outcome(err, show_traceback=False)
        if outcome is None:
            return 128 + signal.SIGINT
        return _fail(*outcome)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] in (["report"], ["bench-model"]):
        return subcommand(argv[0], argv[1:])
    try:
        args = parse_args(argv)
    except SystemExit as done:  # argparse printed its usage line and one `llmc: error:` line
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    logger.remove()
    level = _quiet_follower() or args.log_level
    if distributed.env_world_size() > 1:
        logger.add(sys.stderr, level=level,
                   format=f"rank {distributed.env_rank()} | " + "{time:HH:mm:ss} | {level: <8} | "
                   "{message}")
    else:
        logger.add(sys.stderr, level=level)
    threading.excepthook, previous_hook = thread_failure, threading.excepthook
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        with _sigterm_held(in_main_thread):
            from .config import load_config

            cfg = load_config(args.config, args.overrides)
        from .api import run

        run(cfg)  # the Python API's llmc.run: the CLI adds its one-line errors and signals
    except (Exception, KeyboardInterrupt, Terminated) as err:  # every way a run can end badly
        if distributed.env_world_size() > 1:
            # torchrun stops the other ranks with SIGTERM once one exits: this rank says what
            # failed (a peer's line, when the peer failed first) and exits with its code, not
            # killed halfway through saying it.
            if in_main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            previous = signal.SIG_IGN
        return _report(err, args.log_level in ("TRACE", "DEBUG"))
    finally:
        threading.excepthook = previous_hook
        if in_main_thread:  # as it was (pytest runs main in-process)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0
