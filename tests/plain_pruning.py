"""Plain whole-model pruning, the references the blockwise runner is tested against: the whole
model runs once per window with hooks on the given Linears, then each Linear is pruned alone."""
import torch

from llmc.registry import METHODS
from llmc.runner.stats import Hessian
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
    sums = {id(m): 0 for m in linears}

    def hook(module, inputs, output):
        x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
        sums[id(module)] = sums[id(module)] + (x ** 2).sum(0)

    _forward_all(model, linears, batches, hook)
    return {key: value / len(batches) for key, value in sums.items()}


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
