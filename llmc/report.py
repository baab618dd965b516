"""What a run achieved: the sparsity of every pruned Linear and of every plan unit."""


def sparsity_report(handle) -> dict:
    """Fraction of exact zeros per decoder Linear (by full module name) and over all of them."""
    per_linear, zeros, total = {}, 0, 0
    for (index, name), weight in handle.block_weights().items():
        count = int((weight == 0).sum())
        per_linear[f"{handle.block_path(index)}.{name}"] = count / weight.numel()
        zeros, total = zeros + count, total + weight.numel()
    return {"overall": zeros / max(total, 1), "per_linear": per_linear}


def unit_sparsity(handle, units) -> list:
    """Fraction of exact zeros per plan unit: (block index, None) is a whole decoder layer's
    Linears, (block index, name) one Linear."""
    achieved = []
    for index, name in units:
        linears = handle.block_linears(index)
        weights = [linears[n].weight for n in (linears if name is None else [name])]
        achieved.append(sum(int((w == 0).sum()) for w in weights) /
                        sum(w.numel() for w in weights))
    return achieved

