"""What a run achieved: the sparsity of every pruned Linear and of every plan unit."""


def sparsity_report(handle) -> dict:
    """Fraction of exact zeros per decoder Linear (by full module name) and over all of them."""
    per_linear, zeros, total = {}, 0, 0
    for (index, name), weight in handle.each_block_weight():
        count = int((weight == 0).sum())
        per_linear[f"{handle.block_path(index)}.{name}"] = count / weight.numel()
        zeros, total = zeros + count, total + weight.numel()
    return {"overall": zeros / max(total, 1), "per_linear": per_linear}


def unit_sparsity(handle, units) -> list:
    """Fraction of exact zeros per plan unit: (block index, None) is a whole decoder layer's
    Linears, (block index, name) one Linear."""
    zeros, sizes = {}, {}
    for (index, name), weight in handle.each_block_weight():
        zeros[index, name], sizes[index, name] = int((weight == 0).sum()), weight.numel()
    achieved = []
    for index, name in units:
        keys = [k for k in zeros if k[0] == index and (name is None or k[1] == name)]
        achieved.append(sum(zeros[k] for k in keys) / sum(sizes[k] for k in keys))
    return achieved

