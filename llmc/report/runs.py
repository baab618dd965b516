"""The runs `llmc report` compares: every results.json under the directories it is given, read in
any layout version (results.json `schema`; llmc.save.RESULTS_SCHEMA), as one flat row each.

A run that measured no dense (pretrain) figure, as the runs of a sweep after its first do, gets
it from a run that measured it on the same model with the same evaluation settings: dense
figures depend on nothing else."""
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import LlmcError
from ..save import RESULTS, RESULTS_SCHEMA
from .fields import check_fields, refuse_non_finite

INTERNAL = ".llmc"  # a save path's own bookkeeping: its results.json files are the same runs
SKIPPED_METRICS = ("paragraphs",)
BLOCK_INDEX = re.compile(r"\.(\d+)\.")  # the first index in a Linear's path: its block's


@dataclass
class Run:
    path: Path  # the run's directory (its save path)
    results: dict
    schema: int
    dense: Dict[str, float] = field(default_factory=dict)  # filled by fill_dense

    @property
    def label(self) -> str:
        """What the run did, for plots: method (over base) + steps, N:M type when not
        unstructured."""
        row = identity(self.results)
        name = row["method"] + (f"/{row['base']}" if row["base"] else "")
        if row["structure"]:  # sparse.structure ran first
            name = row["structure"] if name == "none" else f"{row['structure']} + {name}"
        name += f" + {row['steps']}" if row["steps"] else ""
        return name + (f" {row['type']}" if row["type"] != "unstructured" else "")


def find_runs(paths) -> List[Run]:
    """The runs under `paths` (save paths, directories holding them, or results.json files), in
    path order; an LlmcError for a path that does not exist, an unreadable results.json, or
    none found."""
    found = []
    for given in map(Path, paths):
        if not given.exists():
            raise LlmcError(f"report: {given} does not exist; give save paths of runs, or "
                            "directories that hold them")
        if given.is_file():
            found.append(given)
        else:
            found += sorted(p for p in given.rglob(RESULTS)
                            if INTERNAL not in p.relative_to(given).parts)
    if not found:
        raise LlmcError(f"report: no {RESULTS} under {', '.join(map(str, paths))}; give the save "
                        "paths of finished runs")
    seen, runs = set(), []
    for path in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            runs.append(read_run(path))
    fill_dense(runs)
    return runs


def read_run(path: Path) -> Run:
    try:
        results = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse_non_finite)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise LlmcError(f"report: cannot read {path} ({err}); remove it or leave its directory "
                        "out") from None
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        raise LlmcError(f"report: {path} is not an llmc results.json (no config); leave it out")
    schema = results.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise LlmcError(f"report: {path}: the field schema is {json.dumps(schema)}, not a "
                        "positive integer as llmc writes it; fix it or leave the file out")
    if schema > RESULTS_SCHEMA:
        raise LlmcError(f"report: {path} has results schema {schema}, newer than this llmc "
                        f"reads ({RESULTS_SCHEMA}); upgrade llmc")
    check_fields(results, path)
    return Run(path.parent, results, schema)


def identity(results: dict) -> dict:
    """The run's method, base, steps, target sparsity and type, wbits, model and calibration
    (from `method` where the run recorded it, else from its config: the first layout)."""
    config = results["config"]
    sparse, calib = config.get("sparse") or {}, config.get("calib") or {}
    weight = sparse.get("weight") or {}
    method = results.get("method") or {"name": sparse.get("method", "")}
    base = (method.get("base") or {}).get("name") or ""
    steps = " + ".join(method[k].get("name") or "?" for k in ("refine", "update")
                       if method.get(k))
    wbits = (method.get("quantization") or {}).get("wbits", "")
    calibrates = (results.get("inputs") or {}).get("calib_tokens_sha256", True) is not None
    calibration = (f"{calib.get('name')} {calib.get('n_samples')}x{calib.get('seq_len')}"
                   if calibrates and calib else "none")
    structure = ((results.get("structure") or {}).get("method") or {}).get("name") or ""
    return {"structure": structure, "method": method.get("name") or "", "base": base,
            "steps": steps,
            "sparsity": weight.get("sparsity", ""), "type": weight.get("sparsity_type", ""),
            "wbits": wbits, "model": (config.get("model") or {}).get("path", ""),
            "calibration": calibration}


def measurements(results: dict, position: str) -> Dict[str, float]:
    """{column: value} of every perplexity (`<dataset> ppl`) and task metric (`<task> <metric>`)
    measured at `position`."""
    found = {f"{dataset} ppl": value
             for dataset, value in ((results.get("ppl") or {}).get(position) or {}).items()}
    for task, metrics in ((results.get("tasks") or {}).get(position) or {}).items():
        for metric, value in (metrics or {}).items():
            if metric not in SKIPPED_METRICS:
                found[f"{task} {metric}"] = value
    return found


def structure_figures(results: dict) -> Dict[str, object]:
    """What sparse.structure removed (`removed`: blocks, or KV groups and channels per block),
    the parameters and checkpoint bytes before (`(dense)`) and after, and the fraction of the
    parameters removed; empty for a run without one."""
    structure = results.get("structure")
    if not isinstance(structure, dict):
        return {}
    found: Dict[str, object] = {}
    removed = []
    blocks = structure.get("blocks") or {}
    if structure.get("blocks_removed"):
        removed.append(f"{len(structure['blocks_removed'])} of {blocks.get('before')} blocks")
    widths = structure.get("widths") or []
    if widths:
        groups = {len(w.get("removed_kv_groups") or []) for w in widths}
        channels = {len(w.get("removed_channels") or []) for w in widths}
        removed.append(f"{'/'.join(map(str, sorted(groups)))} KV groups, "
                       f"{'/'.join(map(str, sorted(channels)))} channels per block")
    found["removed"] = ", ".join(removed) or "nothing"
    for key, column in (("parameters", "parameters"), ("checkpoint_bytes", "checkpoint bytes")):
        figures = structure.get(key) or {}
        if is_number(figures.get("before")):
            found[f"{column} (dense)"] = figures["before"]
        if is_number(figures.get("after")):
            found[column] = figures["after"]
    parameters = structure.get("parameters") or {}
    if is_number(parameters.get("before")) and is_number(parameters.get("after")) and \
            parameters["before"]:
        found["params removed"] = 1 - parameters["after"] / parameters["before"]
    return found


# results.json bench ratio -> report column (the pruned model's figure / the dense model's)
BENCH_COLUMNS = {"checkpoint_bytes": "checkpoint x", "peak_memory_bytes": "memory x",
                 "prefill_tokens_per_s_bs1": "prefill x bs1",
                 "prefill_tokens_per_s_bs8": "prefill x bs8",
                 "decode_tokens_per_s_bs1": "decode x bs1",
                 "decode_tokens_per_s_bs8": "decode x bs8"}
DECODE_SPEEDUP = "decode x bs1"  # what the speed plot puts on its x axis


def bench_ratios(results: dict) -> Dict[str, float]:
    """{column: ratio to the dense model} of what save.bench measured (the last model it
    measured is the saved one: on CUDA, a 2:4 model on the sparse kernels); empty when the run
    measured nothing."""
    models = (results.get("bench") or {}).get("models") or []
    ratios = (models[-1].get("ratios") or {}) if models and isinstance(models[-1], dict) else {}
    return {column: ratios[key] for key, column in BENCH_COLUMNS.items()
            if is_number(ratios.get(key))}


def dense_key(results: dict) -> Optional[str]:
    """What a dense figure depends on: the input weights and the evaluation settings (not when
    they were measured); None for a run that recorded no model hash (the first layout)."""
    model = (results.get("inputs") or {}).get("model")
    if not isinstance(model, dict) or "sha256" not in model:
        return None
    ev = {k: v for k, v in (results["config"].get("eval") or {}).items() if k != "eval_pos"}
    return json.dumps([model["sha256"], ev], sort_keys=True)


def fill_dense(runs: List[Run]) -> None:
    measured = {}
    for run in runs:
        own = measurements(run.results, "pretrain")
        key = dense_key(run.results)
        if own and key is not None:
            measured.setdefault(key, {}).update(own)
    for run in runs:
        run.dense = {**measured.get(dense_key(run.results), {}),
                     **measurements(run.results, "pretrain")}


def layer_sparsity(results: dict) -> List[float]:
    """Fraction of zeros per decoder block: `sparsity.per_block` (weighted by size) where the run
    recorded it, else the mean of its Linears' fractions (the first layouts)."""
    sparsity = results.get("sparsity") or {}
    if sparsity.get("per_block") is not None:
        return list(sparsity["per_block"])
    blocks: Dict[int, List[float]] = {}
    for name, value in (sparsity.get("per_linear") or {}).items():
        match = BLOCK_INDEX.search(f".{name}")
        if match and value is not None:
            blocks.setdefault(int(match.group(1)), []).append(value)
    return [sum(v) / len(v) for _, v in sorted(blocks.items())]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
