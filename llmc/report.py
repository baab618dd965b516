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
