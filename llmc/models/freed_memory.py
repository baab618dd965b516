"""Memory the process freed, given back to the operating system.

glibc's malloc serves large allocations from mmap only up to a threshold that it raises each
time such a block is freed, so after a while tensors come from the heap, where freed space
between live allocations stays in the process. Two places free a lot of it: a streamed model
dropping each part it is done with (measured on a 3.9 GiB MoE checkpoint, RIA with its
reallocation grew ~130 MB a block to 4.16 GiB, 1.06x the checkpoint, with no tensor alive beyond
one block), and tokenizing a whole corpus in one call (some hundreds of MB that would stay in
the RSS for the rest of a run). `malloc_trim(0)` returns that space (docs/performance.md);
elsewhere than glibc (macOS, musl) it does nothing.
"""
import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """The heap's free pages returned to the operating system (glibc; else nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
