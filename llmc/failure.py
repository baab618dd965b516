"""What the command line says when a run fails with an exception that is not an LlmcError.

Failures of the environment that a user can act on (out of memory, a full disk, a permission)
get one line saying what to change. Anything else is a bug in llmc: one line saying so, with the
full traceback written to a file to attach to the report (printed too at --log-level DEBUG).
"""
import errno
import os
import re
import sys
import tempfile
import traceback
from typing import Optional

MEMORY_ADVICE = "reduce calib.bs / eval.bs / seq_len or use a bigger device"


def _out_of_memory(err) -> Optional[str]:
    """The device that ran out of memory, or None when `err` is no out-of-memory error."""
    torch = sys.modules.get("torch")  # only torch raises its own kind, once it is imported
    torch_oom = torch and (getattr(torch, "OutOfMemoryError", None)
                           or getattr(torch.cuda, "OutOfMemoryError", None))
    if torch_oom and isinstance(err, torch_oom):
        gpu = re.search(r"GPU (\d+)", str(err))
        return f"cuda:{gpu.group(1)}" if gpu else "the GPU"
    if isinstance(err, MemoryError):
        return "the CPU (host memory)"
    if isinstance(err, RuntimeError):
        text = str(err)
        if "DefaultCPUAllocator" in text or "can't allocate memory" in text:
            return "the CPU (host memory)"
        if "out of memory" in text.lower():
            return "the device"
    return None


def _file_of(err) -> str:
    return f"'{err.filename}'" if getattr(err, "filename", None) else "its output"


def environment_failure(err: BaseException) -> Optional[str]:
    """One line for a failure of the machine rather than of llmc, or None."""
    device = _out_of_memory(err)
    if device:
        return f"out of memory on {device}: {MEMORY_ADVICE}"
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err):
        return (f"no space left on device writing {_file_of(err)}: free some space or choose "
                "another save.save_path")
    if code in (errno.EACCES, errno.EPERM):
        return (f"permission denied on {_file_of(err)}: give yourself access or choose another "
                "path")
    if code == errno.EROFS:
        return f"{_file_of(err)} is on a read-only file system: choose another path"
    return None


def write_traceback(err: BaseException) -> Optional[str]:
    """The traceback of `err` in the system temp directory; its path, or None if it cannot be
    written there."""
    try:
        fd, path = _new_file(tempfile.gettempdir(), f"llmc-traceback-{os.getpid()}")
        with open(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"llmc {' '.join(sys.argv[1:])}\n\n")
            f.write("".join(traceback.format_exception(type(err), err, err.__traceback__)))
    except OSError:
        return None
    return path


def _new_file(directory: str, stem: str):
    """(fd, path) of a file created here, never through a link: <stem>.txt when that name is
    free (a shared temp directory may hold anyone's link there), else a unique name."""
    path = os.path.join(directory, f"{stem}.txt")
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), path
    except FileExistsError:
        return tempfile.mkstemp(prefix=f"{stem}-", suffix=".txt", dir=directory)


def thread_failure(hook_args) -> None:
    """threading.excepthook for the CLI: a thread's uncaught exception (a bug: the background
    record catches what the machine can do to it) as one warning line, not a traceback."""
    from loguru import logger

    err = hook_args.exc_value
    if err is None or isinstance(err, SystemExit):
        return
    path = write_traceback(err)
    thread = hook_args.thread.name if hook_args.thread else "a thread"
    logger.warning(f"{thread} failed: {type(err).__name__}: {' '.join(str(err).split())} — a bug "
                   f"in llmc; the traceback was written to {path}; please report it")


def bug_report(err: BaseException, show_traceback: bool) -> str:
    """The one line for an unexpected exception; writes (and maybe prints) its traceback."""
    if show_traceback:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    summary = " ".join(str(err).split()) or "(no message)"
    path = write_traceback(err)
    where = (f"the full traceback was written to {path}" if path else
             "the traceback could not be written to the temp directory (rerun with "
             "--log-level DEBUG to see it)")
    return (f"unexpected {type(err).__name__}: {summary} — this is a bug in llmc; {where}; "
            "please report it")
