"""What a run achieved: sparsity of every pruned Linear, and the software it ran on."""
import platform

import torch


def sparsity_report(model, adapter) -> dict:
    """Fraction of exact zeros per decoder Linear (by full module name) and over all of them."""
    per_linear, zeros, total = {}, 0, 0
    for index, block in enumerate(adapter.get_blocks(model)):
        for name in adapter.linear_names():
            weight = block.get_submodule(name).weight
            count = int((weight == 0).sum())
            per_linear[f"{adapter.blocks}.{index}.{name}"] = count / weight.numel()
            zeros, total = zeros + count, total + weight.numel()
    return {"overall": zeros / max(total, 1), "per_linear": per_linear}


def unit_sparsity(model, adapter, units) -> list:
    """Fraction of exact zeros per plan unit: (block index, None) is a whole decoder layer's
    Linears, (block index, name) one Linear."""
    blocks = adapter.get_blocks(model)
    achieved = []
    for index, name in units:
        weights = [blocks[index].get_submodule(n).weight
                   for n in (adapter.linear_names() if name is None else [name])]
        achieved.append(sum(int((w == 0).sum()) for w in weights) /
                        sum(w.numel() for w in weights))
    return achieved


def versions() -> dict:
    import transformers

    from . import __version__

    found = {"llmc": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "transformers": transformers.__version__}
    try:
        import datasets

        found["datasets"] = datasets.__version__
    except ImportError:
        pass
    return found
