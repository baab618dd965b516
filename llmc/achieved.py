"""What a run achieved: the sparsity of every pruned Linear and of every plan unit, and the run
on one screen for its last log line."""


def sparsity_report(handle) -> dict:
    """Fraction of exact zeros per decoder Linear (by full module name), per decoder block (its
    Linears together) and over all of them."""
    per_linear, zeros, total = {}, 0, 0
    block_zeros, block_sizes = [0] * handle.num_blocks, [0] * handle.num_blocks
    for (index, name), weight in handle.each_block_weight():
        count = int((weight == 0).sum())
        per_linear[f"{handle.block_path(index)}.{name}"] = count / weight.numel()
        zeros, total = zeros + count, total + weight.numel()
        block_zeros[index] += count
        block_sizes[index] += weight.numel()
    per_block = [z / max(n, 1) for z, n in zip(block_zeros, block_sizes)]
    return {"overall": zeros / max(total, 1), "per_block": per_block, "per_linear": per_linear}


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
    after per dataset, accuracy per task, the sparsity reached, the time, and where the outputs
    are."""
    config, method = results["config"], results["method"]
    weight = config["sparse"]["weight"]
    kind = weight["sparsity_type"]
    target = f"{weight['sparsity']:g} unstructured" if kind == "unstructured" else kind
    steps = [method[k]["name"] for k in ("refine", "update") if k in method]
    base = method.get("base", {}).get("name")
    name = method["name"] + (f" over {base}" if base else "")
    pruned = f"{' + '.join([name] + steps)} at {target}"
    structure = results.get("structure")
    if structure is not None:  # sparse.structure ran first (llmc.structure)
        blocks, parameters = structure["blocks"], structure["parameters"]
        made = (f"{structure['method']['name']} (blocks {blocks['before']} -> {blocks['after']}, "
                f"parameters {parameters['before'] / 1e6:.1f}M -> "
                f"{parameters['after'] / 1e6:.1f}M)")
        pruned = made if method["name"] == "none" else f"{made}, then {pruned}"
    lines = [f"{pruned} on {config['model']['path']}"]
    ppl = results.get("ppl", {})
    for dataset in sorted({d for position in ppl.values() for d in position}):
        before = ppl.get("pretrain", {}).get(dataset)
        after = ppl.get("transformed", {}).get(dataset)
        shown = " -> ".join(f"{v:.3f}" if v is not None else "n/a" for v in (before, after))
        lines.append(f"  ppl {dataset} (dense -> pruned): {shown}")
    tasks = results.get("tasks", {})
    for task in sorted({t for position in tasks.values() for t in position}):
        before, after = (tasks.get(p, {}).get(task) for p in ("pretrain", "transformed"))
        metric = "acc" if any(m and "acc" in m for m in (before, after)) else None
        if metric is None:
            continue  # a task without accuracy: its metrics are in results.json
        shown = " -> ".join(f"{m[metric]:.4f}" if m else "n/a" for m in (before, after))
        lines.append(f"  {task} {metric} (dense -> pruned): {shown}")
    timings = results.get("timings", {})
    lines.append(f"  sparsity over decoder Linears: {results['sparsity']['overall']:.4f}; "
                 f"prune {timings.get('prune_total', 0):.1f} s, total "
                 f"{timings.get('total', 0):.1f} s")
    lines.append(f"  outputs: {root}")
    return "\n".join(lines)
