"""Fault injection at named instants of a run, for the tests of what a kill or a failure leaves
on disk (tests/reliability/test_outputs.py). Inert unless its environment variables are set.

- `LLMC_PAUSE_AT=<point>`: on reaching that point, write the point's name and the pid to the file named by
  `LLMC_PAUSE_MARKER` (when set) and sleep until killed, so a test can SIGKILL or SIGTERM the
  process at exactly that instant.
- `LLMC_FAIL_AT=<point>`: on reaching that point, raise InjectedFault, as a late failure would.
- `LLMC_FAULT_RANK=<r>`: under torchrun, the two above act on rank r alone.

The points are listed in POINTS (docs/outputs.md says where each one is).
"""
import os
import time

from .distributed import env_rank
from .errors import LlmcError

POINTS = (
    "run:started",           # lock held, leftovers cleaned, staging directory made
    "structure:sliced",      # a structured pass has sliced a block (streamed: shard written)
    "plan:allocated",        # the method's allocation step done (bench: MixGPT's traces alone)
    "block:written",         # a finished block's shard written, its resume state not yet
    "block:checkpointed",    # the resume state names the next block
    "save:plan-written",     # plan.png in the staging directory
    "save:model-written",    # transformed_model/ in the staging directory
    "save:config-written",   # config.yml in the staging directory
    "save:results-written",  # results.json in the staging directory
    "commit:links-made",     # top-level links for the new run's names exist
    "commit:before-switch",  # the new `current` link made beside the old one
    "commit:after-switch",   # `current` names the new run
    "commit:links-pruned",   # top-level links the new run lacks removed
    "commit:old-removed",    # the previous run's directory removed
)


class InjectedFault(LlmcError):
    """The failure LLMC_FAIL_AT asked for."""


def pause_point(name: str, index=None) -> None:
    """`index` (a block's) lets a test name one instance of a point: `block:written@3`."""
    assert name in POINTS, name
    names = {name} if index is None else {name, f"{name}@{index}"}
    rank = os.environ.get("LLMC_FAULT_RANK")
    if rank is not None and int(rank) != env_rank():
        return
    if os.environ.get("LLMC_FAIL_AT") in names:
        raise InjectedFault(f"injected fault at {name} (LLMC_FAIL_AT)")
    if os.environ.get("LLMC_PAUSE_AT") not in names:
        return
    marker = os.environ.get("LLMC_PAUSE_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write(f"{name} {os.getpid()}")  # the pid: which process of a torchrun to kill
    while True:  # until a signal ends the process (SIGTERM's handler raises out of the sleep)
        time.sleep(60)
