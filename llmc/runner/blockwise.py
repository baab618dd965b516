"""The block loop: one decoder block at a time on the device, calibration windows streamed
through it, statistics gathered by hooks, the block pruned, its outputs handed to the next block.
Blocks reach the device only through the model handle's `block_on`, which brings them back.

It knows no method by name: a method says which statistics it needs and prunes one input group
(the Linears reading the same tensor); a method that allocates first measures through `measure`.
"""
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from loguru import logger
from tqdm import tqdm

from ..distributed import World
from ..errors import LlmcError
from ..faults import pause_point
from ..models.handle import ModelHandle, all_finite, not_finite
from ..sparse.base import COLUMN_ORDER  # what a method records on a Linear for the run to save
from .activations import ActivationFile
from .cache import read_cached, weights_fingerprint, windows_fingerprint, write_cached
from .capture import capture_block_inputs
from .device import activation_home
from .gather import gather_statistics, run_block
from .blockwise_hessian import blockwise_loss_hessian
from .loss_hessian import calibration_windows, loss_hessian


def check_block_outputs(handle, index, finite: torch.Tensor) -> None:
    """A block whose calibration outputs hold NaN/inf (its weights were checked finite on the
    way in) poisons every block after it: stop, naming it and the likely cause."""
    if bool(finite):
        return
    dtype = handle.dtype
    if dtype == torch.float16:
        cause = ("its activations overflow float16 (largest value 65504); set "
                 "model.torch_dtype: float32 (or bfloat16)")
    else:
        cause = (f"its weights are finite, so the model overflows {str(dtype).split('.')[-1]} "
                 "on these inputs: the checkpoint holds values far outside a trained model's "
                 "range (corrupt, or not the model it claims to be)")
    raise LlmcError(f"block {index} ({handle.block_path(index)}) gave NaN/inf outputs on the "
                    f"calibration windows: {cause}")


@torch.no_grad()
def forward_all_blocks(handle, inputs, device, desc="forward per block"):
    """Stream `inputs` (captured at block 0) through every block, one block on the device at a
    time; afterwards they hold the last block's outputs."""
    for index in tqdm(range(handle.num_blocks), desc=desc):
        with handle.block_on(index, device) as block:
            run_block(block, index, inputs, device, replace=True)
    return inputs


@contextmanager
def calibration_home(handle, batches, device, offload, scratch=None):
    """Where this run's calibration activations wait between blocks for the duration: a
    device (see activation_home), or with offload "disk" a memory-mapped file in `scratch`,
    removed on exit."""
    if offload != "disk":
        tokens = sum(batch.numel() for batch in batches)
        yield activation_home(offload, device,
                              tokens * handle.hidden_size * handle.dtype.itemsize)
        return
    if scratch is None:
        raise LlmcError("base.offload_activations: disk needs a save path to keep them in")
    shapes = [(*batch.shape, handle.hidden_size) for batch in batches]
    home = ActivationFile(scratch, shapes, handle.dtype)
    try:
        yield home
    finally:
        home.close()


def require_finite_pruned(handle, block_index, name, weight, method) -> None:
    """A pruned weight holding NaN/inf is the method's arithmetic overflowing on these settings
    (an extreme ADMM rho, say): an error naming the Linear and the settings, never a model."""
    if bool(all_finite(weight)):
        return
    raise LlmcError(f"pruning made {handle.block_path(block_index)}.{name}.weight hold "
                    f"{not_finite(weight)}: the arithmetic of {method.label()} overflowed with "
                    f"its settings {_flat_settings(method.describe())}; choose settings nearer "
                    "the defaults (docs/config.md), or model.torch_dtype: float32")


def _flat_settings(described: dict, prefix: str = "") -> str:
    """{'name': 'Wanda', 'update': {'name': 'admm', 'rho': 1e30}} -> 'update.rho: 1e+30'."""
    parts = []
    for key, value in described.items():
        if isinstance(value, dict):
            parts.append(_flat_settings(value, f"{prefix}{key}."))
        elif key != "name":
            parts.append(f"{prefix}{key}: {value}")
    return ", ".join(part for part in parts if part) or "(none)"


def prune_block(handle, block, block_index, method, plan, statistics=None, world=World()):
    """Prune each input group of `block` (block `block_index` of `handle`, where it is now);
    a method's error is re-raised naming the block. Under torchrun each rank prunes the Linears
    it owns (shared by the method's cost) and each owner's results are broadcast, so every rank
    holds the pruned block (share_pruned); on one process it prunes them all. Returns each
    Linear's owner."""
    groups = handle.groups_of(block_index)
    names = [name for group in groups for name in group]
    owner = dict.fromkeys(names, 0)
    if world.distributed:
        costs = [method.cost(*block.get_submodule(name).weight.shape) for name in names]
        owner = dict(zip(names, world.owners(costs)))
    for group in groups:
        mine = [name for name in group if owner[name] == world.rank]
        if mine:
            linears = {name: block.get_submodule(name) for name in mine}
            stats = statistics.for_linear(group[0]) if statistics else {}
            targets = {name: plan.target(block_index, name) for name in mine}
            try:
                method.prune_group(linears, stats, targets)
            except LlmcError as err:
                raise LlmcError(f"block {block_index} ({handle.block_path(block_index)}): "
                                f"{err}") from None
            del stats
            for name, linear in linears.items():
                require_finite_pruned(handle, block_index, name, linear.weight, method)
            for name, linear in linears.items():  # a mask N:M in a permuted order records it
                order = linear.__dict__.pop(COLUMN_ORDER, None)
                if order is not None:
                    handle.column_orders[f"{handle.block_path(block_index)}.{name}"] = order
        if statistics:
            statistics.release(group)
    return owner


def share_column_orders(handle, index: int, world) -> None:
    """Every rank receives the column orders (RIA's reallocation) the owners of block
    `index`'s Linears recorded, so the rank that saves holds them all."""
    prefix = f"{handle.block_path(index)}."
    mine = {path: order for path, order in handle.column_orders.items()
            if path.startswith(prefix)}
    for recorded in world.collect(mine):
        handle.column_orders.update(recorded)


def share_pruned(block, owner, world) -> None:
    """Every rank receives each Linear's pruned weight from the rank that pruned it."""
    for rank in range(world.size):
        weights = [block.get_submodule(name).weight.data for name, o in owner.items()
                   if o == rank]
        buffers = [w if w.is_contiguous() else w.contiguous() for w in weights]
        world.broadcast_all(buffers, rank)
        for weight, buffer in zip(weights, buffers):
            if buffer is not weight:
                weight.copy_(buffer)


@torch.no_grad()
def prune_blockwise(handle, method, plan, batches, device, sparsity_out=False,
                    offload="auto", resume_at=0, resumed_hidden=None, after_block=None,
                    scratch=None, world=World(), min_expert_tokens=0,
                    under_served=None, column_orders=False) -> dict:
    """Prune every decoder block of `handle`'s model (kept on CPU) in place. Returns timings in
    seconds.

    sparsity_out False: the next block sees the dense outputs of the same forward that gathered
    the statistics (one forward per block). True: outputs are recomputed with the pruned block,
    as the reference repos do (two forwards per block).

    Resuming (llmc.runner.resume): blocks before `resume_at` are done, and `resumed_hidden` are
    the activations entering block `resume_at` (the other call arguments are captured again:
    they depend on the windows only). `after_block(next_block, hidden)` is called once each
    block is finished and written (handle.finish_block), with the activations entering the
    next one. `scratch`: the directory of offload "disk"'s activation file.

    `world` (llmc.distributed): under torchrun this rank forwards its share of `batches` (the
    whole list on every rank), the statistics are combined over the ranks, and the Linears are
    pruned by their owners; `resumed_hidden` and `after_block`'s activations are this rank's.

    MoE experts routed fewer than `min_expert_tokens` calibration tokens are measured on all
    of them and listed in `under_served` (llmc.runner.gather). `column_orders`: the method
    records column orders (handle.column_orders), which the ranks then share block by block."""
    batches = world.share(batches)
    timings = {"capture": 0.0, "forward": 0.0, "combine": 0.0, "prune": 0.0, "share": 0.0,
               "write": 0.0, "checkpoint": 0.0}
    with ExitStack() as stack:  # the activations' home, removed at the end if a file
        inputs = None
        if method.needs:  # e.g. Magnitude needs none: no calibration data, no forward at all
            start = time.perf_counter()
            home = stack.enter_context(calibration_home(handle, batches, device, offload,
                                                        scratch))
            inputs = capture_block_inputs(handle, batches, device, home)
            if resumed_hidden is not None:
                inputs.restore(resumed_hidden)
            timings["capture"] = time.perf_counter() - start
            logger.info(f"pruning {handle.num_blocks} blocks with {method.label()} over "
                        f"{len(inputs)} calibration batches on {device} (activations on {home})")

        for index in tqdm(range(resume_at, handle.num_blocks), desc="pruning blocks",
                          initial=resume_at, total=handle.num_blocks):
            with handle.block_on(index, device) as block:
                start, combine = time.perf_counter(), 0.0
                statistics = None
                if inputs is not None:
                    statistics, finite, combine = gather_statistics(
                        handle, index, block, inputs, method.needs, device,
                        replace=not sparsity_out, world=world,
                        min_expert_tokens=min_expert_tokens, under_served=under_served)
                middle = time.perf_counter()
                owner = prune_block(handle, block, index, method, plan, statistics, world)
                del statistics
                pruned = time.perf_counter()
                if world.distributed:
                    share_pruned(block, owner, world)
                    if column_orders:
                        share_column_orders(handle, index, world)
                end = time.perf_counter()
                if inputs is not None:  # after pruning, so a method's own finer diagnosis wins
                    check_block_outputs(handle, index, finite)
                    if sparsity_out:
                        check_block_outputs(handle, index,
                                            run_block(block, index, inputs, device, replace=True))
                timings["forward"] += (middle - start - combine) + (time.perf_counter() - end)
                timings["combine"] += combine
                timings["prune"] += pruned - middle
                timings["share"] += end - pruned
                start = time.perf_counter()
                handle.finish_block(index)  # a streamed model writes the block out here
                pause_point("block:written", index)
                middle = time.perf_counter()
                if after_block is not None:
                    after_block(index + 1, inputs.hidden if inputs is not None else [])
                    pause_point("block:checkpointed", index)
                timings["write"] += middle - start
                timings["checkpoint"] += time.perf_counter() - middle
    return timings


@torch.no_grad()
def measure_blockwise(handle, needs, batches, device, measure, offload="auto",
                      scratch=None, world=World(), min_expert_tokens=0) -> list:
    """Stream the calibration windows through the dense model, one block at a time, gathering
    the statistics `needs` per input group; prune nothing. Returns
    [measure(block_index, block, statistics) for every block], e.g. OWL's outlier ratios (under
    torchrun: over every rank's share of the windows, as rank 0 measured them)."""
    batches = world.share(batches)
    with calibration_home(handle, batches, device, offload, scratch) as home:
        inputs = capture_block_inputs(handle, batches, device, home)
        measured = []
        for index in tqdm(range(handle.num_blocks), desc="measuring blocks"):
            with handle.block_on(index, device) as block:
                statistics, finite, _ = gather_statistics(  # replace: feeds the next block
                    handle, index, block, inputs, needs, device, replace=True, world=world,
                    min_expert_tokens=min_expert_tokens)
                check_block_outputs(handle, index, finite)
                measured.append(measure(index, block, statistics))
                del statistics
    return world.broadcast_object(measured)  # every rank plans from the same numbers


@dataclass
class Calibration:
    """What a method's allocation step may use: the model's handle and the calibration batches,
    with the runner's dense block loop (`measure`) so no method writes its own, the loss
    Hessian (`loss_hessian`) and a cache of measurements in `cache_dir`.

    Under torchrun (`world`), `measure` splits the windows over the ranks; `windows` and the
    loss Hessian are every rank's, on all windows (the Hutchinson estimator shares its probes
    out: llmc.sparse.hutchinson); `cached` computes on every rank and keeps rank 0's result."""
    handle: ModelHandle
    batches: list
    device: torch.device
    offload: object = "auto"
    cache_dir: Optional[str] = None  # where `cached` keeps files (save.save_path); None: no cache
    overwrite: bool = False  # whether a cached file for another key may be replaced
    scratch: Optional[Path] = None  # where offload "disk" keeps the activations
    world: World = field(default_factory=World)
    min_expert_tokens: int = 0  # llmc.runner.gather

    def measure(self, needs, measure) -> list:
        return measure_blockwise(self.handle, needs, self.batches, self.device, measure,
                                 self.offload, self.scratch, self.world, self.min_expert_tokens)

    def windows(self, n_windows: int) -> list:
        return calibration_windows(self.batches, n_windows)

    def loss_hessian(self, n_windows: int, blockwise: bool = True):
        """Context manager yielding (shapes, hvp) over the first `n_windows` windows: one block
        on the device at a time (llmc.runner.blockwise_hessian), or with `blockwise` False the
        whole model with a double backward (llmc.runner.loss_hessian)."""
        hessian = blockwise_loss_hessian if blockwise else loss_hessian
        return hessian(self.handle, self.windows(n_windows), self.device)

    def fingerprint(self, n_windows: int) -> dict:
        """What identifies the model's block weights and the first `n_windows` windows."""
        return {"model": weights_fingerprint(self.handle.each_block_weight()),
                "windows": windows_fingerprint(self.windows(n_windows))}

    def cached(self, filename: str, key: dict, compute):
        """(value, reused): compute() kept in cache_dir/filename for `key` (as cached_json).
        Under torchrun rank 0 alone reads and writes the file; a value it finds there is handed
        to every rank, otherwise every rank computes and rank 0's value is kept by all."""
        world = self.world
        path = Path(self.cache_dir) / filename if self.cache_dir is not None else None
        found = None
        if world.leads and path is not None:
            found = read_cached(path, key, self.overwrite)
        found = world.broadcast_object(found)
        if found is not None:
            return found[0], True
        value = world.broadcast_object(compute())
        if world.leads and path is not None:
            write_cached(path, key, value)
        return value, False
