"""The exclusive lock on a save path: `.llmc/lock`, created with O_CREAT|O_EXCL and holding its
owner (pid, host, start time, the process's start time in clock ticks since boot and the boot
id), so a refused run can say who holds it and a lock whose owner is gone can be recognised.

A lock is stale when its owner was on this host and booted with this kernel (or no boot id was
recorded) and its pid is dead, or alive but started at another time (the pid was reused). A
stale lock is taken over without a race: it is renamed to a unique name, the renamed file is
checked to be the stale one (two runs may race for it), and the lock is created again with
O_EXCL, which only one of them wins. Every committing run re-checks that the lock is still its
own right before its switch (`LockFile.still_ours`).
"""
import datetime
import json
import os
import secrets
import socket
import time
from typing import Optional

from loguru import logger

from ..errors import LlmcError
from .layout import STALE_LOCK_PREFIX, Layout

UNREADABLE_GRACE_S = 10  # an unreadable lock younger than this may be a lock being written


def _read(path) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def proc_start_ticks(pid: int) -> Optional[int]:
    """The start time of process `pid` in clock ticks since boot (/proc/<pid>/stat field 22)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def boot_id() -> Optional[str]:
    text = _read("/proc/sys/kernel/random/boot_id")
    return text.strip() if text else None


def this_owner() -> dict:
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "proc_start": proc_start_ticks(os.getpid()), "boot_id": boot_id()}


def describe(owner: dict) -> str:
    return (f"pid {owner.get('pid')} on host {owner.get('host')}, started "
            f"{owner.get('started')}")


def owner_is_gone(owner: dict) -> bool:
    """True when the owner (on this host) is certainly not running any more."""
    if owner.get("boot_id") and boot_id() and owner["boot_id"] != boot_id():
        return True  # the machine rebooted since
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    started = proc_start_ticks(pid)
    return owner.get("proc_start") is not None and started is not None \
        and started != owner["proc_start"]


class LockFile:
    """The lock on layout.root: acquire() before a run touches the save path, release() on every
    way out (llmc.outputs.open_run)."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.text = None  # what we wrote, to tell our lock from another

    def acquire(self) -> None:
        owner = this_owner()
        text = json.dumps(owner)
        for _ in range(3):  # a stale lock taken over, then created again (at most twice)
            if self._create(text):
                self.text = text
                return
            self._take_over_if_stale()
        raise LlmcError(f"could not take the lock {self.layout.lock}; another run keeps "
                        "taking it; try again")

    def _create(self, text: str) -> bool:
        try:
            fd = os.open(self.layout.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        try:
            with open(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.unlink(self.layout.lock)  # not left half-written to block the next run
            raise
        return True

    def _take_over_if_stale(self) -> None:
        """Remove the lock if it is stale (with a warning); otherwise raise the error naming its
        owner."""
        lock = self.layout.lock
        held = _read(lock)
        if held is None:
            return  # released meanwhile: try to create it again
        owner = self._parse(held, lock)
        if owner.get("host") != socket.gethostname():
            raise LlmcError(f"save.save_path '{self.layout.root}' is locked by a run on another "
                            f"host ({describe(owner)}); wait for it to finish, or if that run is "
                            f"gone, delete {lock}")
        if not owner_is_gone(owner):
            raise LlmcError(f"save.save_path '{self.layout.root}' is in use by another llmc run "
                            f"({describe(owner)}); wait for it to finish or choose another "
                            "save.save_path")
        aside = lock.with_name(f"{STALE_LOCK_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(lock, aside)
        except FileNotFoundError:
            return  # another run took it over first: creating it again tells who won
        if _read(aside) != held:
            # We moved a lock another run created after taking over the same stale lock: put
            # it back (link fails if a third run created one meanwhile; that run's or this
            # one's switch then finds the lock is not theirs and refuses to commit).
            try:
                os.link(aside, lock)
            except OSError:
                pass
            os.unlink(aside)
            return
        os.unlink(aside)
        logger.warning(f"taking over the stale lock of pid {owner.get('pid')} on {lock} "
                       f"({describe(owner)}; that run ended without releasing it)")

    def _parse(self, held: str, lock) -> dict:
        try:
            owner = json.loads(held)
            if isinstance(owner, dict):
                return owner
        except ValueError:
            pass
        try:
            age = time.time() - os.stat(lock).st_mtime
        except FileNotFoundError:
            age = 0
        if age < UNREADABLE_GRACE_S:
            raise LlmcError(f"save.save_path '{self.layout.root}' is being locked by another "
                            f"run right now ({lock} is still being written); wait for it to "
                            "finish or choose another save.save_path")
        # A run killed between creating and writing its lock: stale, whoever it was.
        return {"pid": None, "host": socket.gethostname(), "started": "unknown"}

    def still_ours(self) -> bool:
        return self.text is not None and _read(self.layout.lock) == self.text

    def holder(self) -> str:
        """Who holds the lock now, for an error message."""
        held = _read(self.layout.lock)
        try:
            return describe(json.loads(held)) if held else "nobody"
        except ValueError:
            return "unknown"

    def release(self) -> None:
        """Remove the lock if it is still ours (a run that lost it leaves the new owner's)."""
        if self.still_ours():
            try:
                os.unlink(self.layout.lock)
            except FileNotFoundError:
                pass
        self.text = None
