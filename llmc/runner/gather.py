"""One block's calibration forward with the statistics a method needs, per input group.

A MoE block's experts (llmc.models.experts) see only the tokens the router sends them. An expert
that got fewer than `min_expert_tokens` (calib.min_expert_tokens, over every rank's windows) is
measured again on every token that entered its MoE layer, as if the router had sent them all
to it: its statistics then describe the inputs it may see rather than a handful of them. The
layer's inputs are kept (on the CPU) during the forward for this, and each such expert is
reported (`under_served`: block, expert, routed tokens).
"""
import time

import torch

from ..distributed import World
from ..errors import LlmcError
from .capture import block_output
from .stats import GroupStatistics


@torch.no_grad()
def run_block(block, index, inputs, device, replace: bool) -> torch.Tensor:
    """Forward every batch of `inputs` through `block` (block `index`, called with the
    arguments the model passes it); with `replace`, each batch's output takes the place of its
    input (so activations are held once, not twice). Returns whether every output was finite,
    as a bool tensor on `device` (read without a sync per batch)."""
    finite = torch.ones((), dtype=torch.bool, device=device)
    for batch, hidden in enumerate(inputs.hidden):
        args, kwargs = inputs.call(batch, index)
        out = block_output(block(hidden.to(device), *args, **kwargs))
        finite &= torch.isfinite(out).all()
        if replace:
            inputs.replace(batch, out)
    return finite


@torch.no_grad()
def gather_statistics(handle, index, block, inputs, needs, device, replace, world=World(),
                      min_expert_tokens=0, under_served=None):
    """(statistics, finite, seconds spent combining over ranks) of block `index` (`block`,
    on `device`) over `inputs`, gathering `needs` per input group (run_block's `replace` and
    finite flag). `under_served`: a list the experts measured on all tokens are added to."""
    statistics = GroupStatistics(block, handle.groups_of(index), needs, device)
    experts = handle.experts_of(block)
    for _, module in experts:
        module.routed = [0] * len(module)
        module.kept_inputs = [] if min_expert_tokens > 0 else None
    try:
        finite = run_block(block, index, inputs, device, replace)
    finally:
        statistics.remove_hooks(check=False)
        kept = {path: module.kept_inputs for path, module in experts}
        for _, module in experts:
            module.kept_inputs = None
    for path, module in experts:
        routed = world.sum(torch.tensor(module.routed, device=device)).tolist()
        few = [e for e, count in enumerate(routed) if count < min_expert_tokens]
        if not few:
            if 0 in routed:
                e = routed.index(0)
                raise LlmcError(f"block {index}: expert {path}.{e} received no calibration "
                                "token from the router, so nothing measures its inputs; set "
                                "calib.min_expert_tokens above 0 (it is then measured on all "
                                "tokens), or calibrate on more windows")
            continue
        groups = [g for g in handle.groups_of(index)
                  if any(g[0].startswith(f"{path}.{e}.") for e in few)]

        def feed(layer_inputs=kept[path], module=module, few=few):
            for hidden in layer_inputs:
                hidden = hidden.to(device)
                for e in few:
                    module[e](hidden)

        statistics.regather(groups, feed)
        if under_served is not None:
            under_served.extend({"block": index, "expert": f"{path}.{e}", "tokens": routed[e]}
                                for e in few)
    del kept
    statistics.check_reached()
    start = time.perf_counter()
    statistics.combine(world)
    return statistics, finite, time.perf_counter() - start
