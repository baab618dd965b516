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



def run_summary(results: dict, root) -> str:
    """The run on one screen, for its last log line: what was pruned how, perplexity before and
    after per dataset, the sparsity reached, the time, and where the outputs are."""
    config, method = results["config"], results["method"]
    weight = config["sparse"]["weight"]
    kind = weight["sparsity_type"]
    target = f"{weight['sparsity']:g} unstructured" if kind == "unstructured" else kind
    steps = [method[k]["name"] for k in ("refine", "update") if k in method]
    base = method.get("base", {}).get("name")
    name = method["name"] + (f" over {base}" if base else "")
    lines = [f"{' + '.join([name] + steps)} at {target} on {config['model']['path']}"]
    ppl = results.get("ppl", {})
    for dataset in sorted({d for position in ppl.values() for d in position}):
        before = ppl.get("pretrain", {}).get(dataset)
        after = ppl.get("transformed", {}).get(dataset)
        shown = " -> ".join(f"{v:.3f}" if v is not None else "n/a" for v in (before, after))
        lines.append(f"  ppl {dataset} (dense -> pruned): {shown}")
    timings = results.get("timings", {})
    lines.append(f"  sparsity over decoder Linears: {results['sparsity']['overall']:.4f}; "
                 f"prune {timings.get('prune_total', 0):.1f} s, total "
                 f"{timings.get('total', 0):.1f} s")
    lines.append(f"  outputs: {root}")
    return "\n".join(lines)
