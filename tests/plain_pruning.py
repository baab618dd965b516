"""Plain whole-model pruning, the references the blockwise runner is tested against: the whole
model runs once per window with hooks on the given Linears, then each Linear is pruned alone.

The statistics are accumulated with the library's own accumulators (InputNorms, Hessian), each
Linear hooked on its own: their maths is tested against float64 re-computations in
tests/runner/test_stats.py. So a reference and the runner run the same floating-point operations
in the same order (the same block kernels on the same inputs, the same accumulation), and the
tests compare them bit for bit: what differs is only what the runner adds (capturing block 0's
inputs, replaying each block with them, input groups sharing one accumulator, sparsity_out)."""
import torch

from llmc.registry import METHODS
from llmc.registry import STATISTICS
from llmc.runner.stats import Hessian, InputNorms
from llmc.sparse import UniformPlan
from llmc.sparse.masks import n_m_mask, row_lowest_mask


def _forward_all(model, linears, batches, hook):
    handles = [m.register_forward_hook(hook) for m in linears]
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids)
    for handle in handles:
        handle.remove()


def plain_input_norms(model, linears, batches):
    """Per Linear, the mean over windows of each input column's squared norm over the window's
    tokens (OPT's fc1/fc2 see (tokens, features))."""
    norms = {id(m): InputNorms(m.in_features, "cpu") for m in linears}
    _forward_all(model, linears, batches, lambda mod, inp, out: norms[id(mod)].add(inp[0]))
    return {key: accumulator.value for key, accumulator in norms.items()}


def plain_wanda(model, linears, batches, sparsity, n_m):
    norms = plain_input_norms(model, linears, batches)
    for linear in linears:
        score = linear.weight.data.abs() * torch.sqrt(norms[id(linear)])
        mask = n_m_mask(score, *n_m) if n_m else row_lowest_mask(score, sparsity)
        linear.weight.data[mask] = 0


def plain_sparsegpt(model, linears, batches, cfg):
    """A Hessian per Linear, then each Linear pruned on its own with the library's OBS pass
    (itself tested against a float64 OBS in tests/sparse/test_sparsegpt.py)."""
    hessians = {id(m): Hessian(m.in_features, "cpu") for m in linears}
    _forward_all(model, linears, batches, lambda mod, inp, out: hessians[id(mod)].add(inp[0]))
    method = METHODS["SparseGPT"](cfg)
    target = UniformPlan(cfg.weight).target(0, "")
    for linear in linears:
        method.prune(linear, {"hessian": hessians[id(linear)].value}, target)


def plain_stepped(model, linears, batches, method):
    """A method followed by its steps (`method` built from a SparseCfg with refine / update): each
    Linear its own accumulators of every statistic the composition needs, then, Linear by Linear,
    the method's score, the refined (or the method's) mask and the updated (or masked) weights,
    with the library's step maths (tested against plain re-computations in tests/sparse)."""
    accumulators = {id(m): {need: STATISTICS[need](m.in_features, "cpu") for need in method.needs}
                    for m in linears}

    def gather(module, inputs, output):
        for accumulator in accumulators[id(module)].values():
            accumulator.add(inputs[0])

    _forward_all(model, linears, batches, gather)
    target = UniformPlan(method.cfg.weight).target(0, "")
    for linear in linears:
        stats = {need: acc.value for need, acc in accumulators[id(linear)].items()}
        score = method.method.score(linear, stats)
        if method.refine:
            mask = method.refine.refine(linear.weight.data, score, stats, target, "self_attn")
        else:
            mask = method.method.select(score, target)
        if method.update:
            system = method.update.prepare(stats)
            linear.weight.data.copy_(method.update.update(linear.weight.data, mask, system,
                                                          target, ""))
        else:
            linear.weight.data[mask] = 0
