"""Data-parallel runs under torchrun: what a rank owns and how the ranks' work is combined.

`torchrun --nproc_per_node N -m llmc --config X` starts N processes with RANK, WORLD_SIZE and
LOCAL_RANK set; each joins one process group (NCCL on CUDA, gloo on the CPU). Without torchrun
(or with one process) the World is a single rank and every method below is the identity, so a
plain run computes exactly what it did before this module existed.

What is split (docs/scaling.md): calibration and eval windows (rank r holds windows r, r+N, ...),
and each block's Linears (assigned by the method's cost, pruned by their owner, then broadcast).
Statistics are combined as sums: each rank's running mean times its window count, summed over
the ranks, divided by the total count.

A failure on one rank is published in the process group's store before the rank exits; a rank
whose collective then fails (its peer's sockets closed) or that torchrun stops with SIGTERM
reports that message instead of its own secondary one (llmc.cli). Collectives wait at most
`base.collective_timeout` seconds.

torch is imported where a collective needs it, not with the module: the command line reads the
rank (to set up logging) before anything heavy is imported.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from .errors import ConfigError, LlmcError

if TYPE_CHECKING:
    import torch

FAILURE_KEY = "llmc/failure"
RANK_KEY = "llmc/rank/{}"  # a rank's host and pid, so a rank that dies without a word is named
PEER_MESSAGE_WAIT = 2.0  # seconds to wait for a failed peer's line (published before it exits)


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), readable before any
    process group exists (to choose the log level)."""
    return int(os.environ.get("RANK", "0") or 0)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_local_world_size() -> int:
    """How many ranks torchrun started on this machine."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) if env_world_size() > 1 else 1


def env_local_rank() -> int:
    """The rank among this machine's processes: the GPU a rank uses (cuda:LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def check_ranks(calib_cfg, ranks: int) -> None:
    """Under torchrun each rank holds windows r, r + N, ...: one window per batch, and at least
    one window per rank."""
    if ranks <= 1:
        return
    if calib_cfg.bs != 1:
        raise ConfigError(f"calib.bs is {calib_cfg.bs}, but under torchrun ({ranks} ranks) the "
                          "calibration windows are split one by one over the ranks: set "
                          "calib.bs: 1 (each rank then holds 1/N of the activations)")
    if calib_cfg.n_samples < ranks:
        raise ConfigError(f"calib.n_samples is {calib_cfg.n_samples}, fewer than the {ranks} "
                          f"ranks: each rank needs a window; raise it to at least {ranks} or "
                          "run fewer processes")


class PeerLost(LlmcError):
    """A collective failed or timed out: another rank died, failed or hangs."""


@dataclass
class World:
    """The ranks of this run. The default is one process: nothing to split or combine."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout: float = 1800.0
    store: object = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def leads(self) -> bool:
        """Rank 0: the one that takes the lock, logs, writes outputs and checkpoints."""
        return self.rank == 0

    # ---------------------------------------------------------------- what a rank owns
    def share(self, items: Sequence) -> list:
        """This rank's windows: r, r + N, r + 2N, ..."""
        return list(items[self.rank::self.size])

    def owners(self, costs: Sequence[float]) -> List[int]:
        """The rank owning each item: largest cost first, each to the least loaded rank (ties to
        the lowest rank), so every rank computes the same assignment."""
        load = [0.0] * self.size
        owner = [0] * len(costs)
        for item in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
            rank = min(range(self.size), key=lambda r: (load[r], r))
            owner[item] = rank
            load[rank] += costs[item]
        return owner

    # ---------------------------------------------------------------- collectives
    def _collective(self, what: str, call):
        try:
            return call()
        except RuntimeError as err:  # gloo/NCCL: a peer closed its sockets, or the timeout
            text = " ".join(str(err).split())[:300]
            waited = "timed out" in text.lower() or "timeout" in text.lower()
            cause = (f"no answer from the other ranks within base.collective_timeout "
                     f"({self.timeout:g} s)" if waited else "lost contact with another rank")
            raise PeerLost(f"rank {self.rank}: {what} failed: {cause} ({text})") from None

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce `tensor` in place (sum over ranks)."""
        if self.distributed:
            import torch.distributed as dist

            self._collective("an all-reduce", lambda: dist.all_reduce(tensor))
        return tensor

    def sum_all(self, tensors: List[torch.Tensor]) -> None:
        """All-reduce each of `tensors` in place, small ones packed together (one collective
        per BUCKET_BYTES instead of one per tensor: on a CPU a collective costs milliseconds
        whatever its size)."""
        import torch

        for bucket in _buckets(tensors):
            if len(bucket) == 1:
                self.sum(bucket[0])
                continue
            flat = self.sum(torch.cat([t.reshape(-1) for t in bucket]))
            for tensor, part in zip(bucket, flat.split([t.numel() for t in bucket])):
                tensor.copy_(part.view_as(tensor))

    def broadcast_all(self, tensors: List[torch.Tensor], src: int) -> None:
        """Broadcast each of `tensors` (contiguous, the same shapes and dtypes on every rank)
        from rank `src` in place, as bytes (any dtype, bit for bit), packed as sum_all packs."""
        import torch

        raw = [t.view(-1).view(torch.uint8) for t in tensors]
        for bucket in _buckets(raw):
            if len(bucket) == 1:
                self.broadcast(bucket[0], src)
                continue
            flat = (torch.cat(bucket) if self.rank == src else
                    torch.empty(sum(t.numel() for t in bucket), dtype=torch.uint8,
                                device=bucket[0].device))
            self.broadcast(flat, src)
            if self.rank != src:
                for tensor, part in zip(bucket, flat.split([t.numel() for t in bucket])):
                    tensor.copy_(part)

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        if self.distributed:
            import torch.distributed as dist

            self._collective("a broadcast", lambda: dist.broadcast(tensor, src))
        return tensor

    def broadcast_object(self, value, src: int = 0):
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        self._collective("a broadcast", lambda: dist.broadcast_object_list(box, src))
        return box[0]

    def collect(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values = [None] * self.size
        self._collective("a gather", lambda: dist.all_gather_object(values, value))
        return values

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            self._collective("a barrier", dist.barrier)

    def all_true(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank."""
        if not self.distributed:
            return flag
        import torch

        count = torch.tensor([0 if flag else 1], dtype=torch.int64, device=self._device())
        return int(self.sum(count).item()) == 0

    def _device(self) -> torch.device:
        import torch
        import torch.distributed as dist

        return (torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl"
                else torch.device("cpu"))

    # ---------------------------------------------------------------- failures
    def publish_failure(self, line: str, code: int) -> None:
        """Record this rank's failure (the first one recorded wins) for the others to report."""
        if not self.distributed or self.store is None:
            return
        try:
            self.store.compare_set(FAILURE_KEY, "", f"{code}|{line}")
        except Exception:  # the store went with the rank that hosted it: nothing to tell
            pass

    def announce(self) -> None:
        """Record this rank's host and pid in the store (lost_ranks reads them)."""
        try:
            self.store.set(RANK_KEY.format(self.rank), f"{socket.gethostname()}|{os.getpid()}")
        except Exception:  # a store that cannot take it: a lost rank is then not named
            pass

    def lost_ranks(self) -> List[int]:
        """The other ranks on this host whose process is gone: killed by a signal (SIGKILL,
        the kernel's out-of-memory killer) before it could publish a failure."""
        lost = []
        for rank in range(self.size):
            if rank == self.rank:
                continue
            try:
                key = RANK_KEY.format(rank)
                if not self.store.check([key]):
                    continue
                host, _, pid = self.store.get(key).decode().partition("|")
            except Exception:  # the store went too
                return lost
            if host == socket.gethostname() and not _process_alive(int(pid)):
                lost.append(rank)
        return lost

    def peer_failure(self, wait: float = PEER_MESSAGE_WAIT) -> Optional[Tuple[str, int]]:
        """(line, code) another rank published, waiting up to `wait` seconds for it."""
        if not self.distributed or self.store is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            try:
                if self.store.check([FAILURE_KEY]):
                    code, _, line = self.store.get(FAILURE_KEY).decode().partition("|")
                    return line, int(code)
            except Exception:
                return None
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)


def _process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by torchrun, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not os.path.isdir("/proc")  # no /proc entry on a system that has /proc: gone


BUCKET_BYTES = 64 * 2**20  # the most a packed collective copies at once


def _buckets(tensors: List[torch.Tensor]):
    """Consecutive runs of same-dtype, same-device tensors of at most BUCKET_BYTES together (a
    larger tensor alone)."""
    bucket, size = [], 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and (size + nbytes > BUCKET_BYTES or tensor.dtype != bucket[0].dtype
                       or tensor.device != bucket[0].device):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        yield bucket


_WORLD = World()


def world() -> World:
    """The World of this process (one rank until `join` under torchrun)."""
    return _WORLD


def join(device: torch.device, timeout: float) -> World:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL for a CUDA device, else gloo);
    otherwise the single-process World. A process keeps its group for later runs (making a new
    one per run is fragile) and leaves it at exit."""
    global _WORLD
    size = env_world_size()
    if size <= 1:
        _WORLD = World(timeout=timeout)
        return _WORLD
    import atexit

    import torch
    import torch.distributed as dist
    from torch.distributed import distributed_c10d

    if device.type == "cuda":  # NCCL's collectives run on the current device
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as err:
            raise LlmcError(f"could not join torchrun's process group ({backend}, rank "
                            f"{env_rank()} of {size}): {' '.join(str(err).split())[:300]}; "
                            "check MASTER_ADDR / MASTER_PORT and that every rank started "
                            "(docs/scaling.md)") from None
        atexit.register(_leave)
    _WORLD = World(rank=dist.get_rank(), size=dist.get_world_size(),
                   local_rank=env_local_rank(), timeout=timeout,
                   store=distributed_c10d._get_default_store())
    _WORLD.announce()
    return _WORLD


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
