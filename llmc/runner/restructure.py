"""The structured pass: one dense forward of the calibration windows through the blocks, one
block on the device at a time, in which a structured method (llmc.structure) observes each
block's hidden states or statistics; the widths it chooses are sliced out of each block as it
is done with (the next block sees the dense outputs, as FLAP's code), and the blocks it chooses
are deleted at the end (llmc.models.slicing). It knows no method by name."""
from contextlib import ExitStack
from functools import partial

import torch
from loguru import logger
from tqdm import tqdm

from ..distributed import World
from ..errors import LlmcError
from ..faults import pause_point
from ..models.slicing import (Kept, biases_expressible, block_shape, check_expressible,
                              remove_blocks, resize_config, slice_block, target_biases)
from ..structure.base import BlockWidths
from .blockwise import calibration_home, check_block_outputs
from .capture import block_output, capture_block_inputs
from .stats import GroupStatistics


def _width_plan(handle, structure):
    """(Linears measured, Shape, Kept, {block: Linears given a bias}) of a width method
    (checked expressible before any forward; a bias the config cannot give is left out), or
    ((), None, None, {})."""
    table = handle.adapter.widths
    if not structure.needs:
        return (), None, None, {}
    if table is None:
        raise LlmcError(f"sparse.structure: {structure.NAME} needs the adapter's width table "
                        f"(which config keys size the heads and MLP channels), which "
                        f"{handle.adapter.name} has not; use ShortGPT or Contiguous")
    measured = structure.measures(table)
    if not measured:
        return (), None, None, {}
    shape = block_shape(handle)
    kept = biases_expressible(handle, shape, structure.kept(shape))
    return measured, shape, kept, target_biases(handle, check_expressible(handle, shape, kept))


def _last_hidden(modules, out):
    """The model's last hidden state from the last block's output: the post-block modules but
    the head (the final norm), as transformers' output_hidden_states ends; a projection to
    another width (OPT-350m's project_out) is left out, as a cosine needs one width."""
    for module in modules[:-1]:
        projected = module(out)
        if projected.shape != out.shape:
            break
        out = projected
    return out


@torch.no_grad()
def restructure_blockwise(handle, structure, batches, device, offload="auto",
                          scratch=None, world=World()) -> dict:
    """Run `structure`'s pass over `handle`'s model and make the model smaller in place.
    Returns {"blocks_removed": [indices of the model as it was], "widths": {block index:
    BlockWidths}}.

    Under torchrun (`world`) each rank forwards its share of the windows; the statistics and
    what the method accumulated (`totals`) are summed over the ranks before it chooses, so
    every rank removes the same parts."""
    batches = world.share(batches)
    count = handle.num_blocks
    structure.start(count)
    measured, shape, kept, biases = _width_plan(handle, structure)
    widths = {}
    with ExitStack() as stack:
        home = stack.enter_context(calibration_home(handle, batches, device, offload, scratch))
        inputs = capture_block_inputs(handle, batches, device, home)
        logger.info(f"structured pass of {structure.NAME} over {count} blocks and "
                    f"{len(inputs)} calibration batches on {device}")
        for index in tqdm(range(count), desc=f"{structure.NAME} pass"):
            with ExitStack() as on_hand:
                block = on_hand.enter_context(handle.block_on(index, device))
                post = (on_hand.enter_context(handle.post_blocks_on(device))
                        if structure.HIDDEN and index == count - 1 else None)
                statistics = (GroupStatistics(block, [(name,) for name in measured],
                                              structure.needs, device) if measured else None)
                finite = torch.ones((), dtype=torch.bool, device=device)
                try:
                    for batch, hidden in enumerate(inputs.hidden):
                        args, kwargs = inputs.call(batch, index)
                        hidden = hidden.to(device)
                        out = block_output(block(hidden, *args, **kwargs))
                        finite &= torch.isfinite(out).all()
                        if structure.HIDDEN:
                            structure.observe(index, batch, hidden,
                                              out if post is None else _last_hidden(post, out))
                        inputs.replace(batch, out)
                finally:
                    if statistics is not None:
                        statistics.remove_hooks(check=False)
                check_block_outputs(handle, index, finite)
                if statistics is not None:
                    statistics.check_reached()
                    statistics.combine(world)
                    linears = {name: block.get_submodule(name) for name in measured}
                    widths[index] = structure.block_widths(shape, kept, linears, statistics)
                    del statistics
            if index in widths:  # the dense block is done with: sliced (a streamed one written)
                handle.reshape_block(index, partial(slice_block, table=handle.adapter.widths,
                                                    shape=shape, widths=widths[index],
                                                    biases=biases[index]))
                pause_point("structure:sliced", index)
    if widths:
        resize_config(handle, shape, kept)
        if handle.streams and world.distributed:
            world.barrier()  # rank 0 has written every sliced block: the others read them
            if not world.leads:
                handle.adopt_reshaped_blocks(sorted(widths))
    totals = structure.totals()
    if totals is not None:  # every rank's windows counted, in one order
        structure.take_totals(world.sum(totals))
    removed = structure.blocks_to_remove(count)
    if removed:
        remove_blocks(handle, removed)
    return {"blocks_removed": removed, "widths": widths}


def reapply_structure(handle, record: dict, verified) -> None:
    """A resumed streamed run's skeleton made what the interrupted run's structured pass made
    it (`record`: its results.json "structure"), without a forward: the same blocks sliced (on
    the meta device) and read from the shards that pass wrote (`verified`: their sha256s, as
    the resume state checked them), the same blocks removed."""
    widths = record["widths"]
    if widths:
        shape = block_shape(handle)
        table = handle.adapter.widths
        removed_groups = {len(w["removed_kv_groups"]) for w in widths}
        removed_channels = {len(w["removed_channels"]) for w in widths}
        if len(removed_groups) != 1 or len(removed_channels) != 1:
            raise ValueError("the recorded widths are not uniform")
        added = {name for w in widths for name in w["bias_added"]}
        kept = Kept(shape.kv_heads - removed_groups.pop(), shape.channels - removed_channels.pop(),
                    attention_bias=table.attention_out in added,
                    channel_bias=table.channel_out in added)
        biases = target_biases(handle, check_expressible(handle, shape, kept))
        for w in widths:
            block_widths = BlockWidths(
                kept_groups=_kept(w["removed_kv_groups"], shape.kv_heads),
                kept_channels=_kept(w["removed_channels"], shape.channels),
                added_bias={name: torch.zeros(handle.hidden_size, device="meta")
                            for name in w["bias_added"]})
            handle.reshape_skeleton(w["block"], partial(
                slice_block, table=table, shape=shape, widths=block_widths,
                biases=biases[w["block"]]))
        resize_config(handle, shape, kept)
        handle.adopt_reshaped_blocks([w["block"] for w in widths], verified)
    if record["blocks_removed"]:
        remove_blocks(handle, record["blocks_removed"])


def _kept(removed, count):
    """The indices kept of `count` when `removed` are not (None: nothing removed)."""
    gone = set(removed)
    return [i for i in range(count) if i not in gone] if gone else None
