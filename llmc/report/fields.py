"""The fields of a results.json that `llmc report` reads, and the type each must have: a file
edited by hand or written by another tool is one error line naming the file and the field,
never a traceback. null stands for "not recorded" anywhere (strict JSON writes a non-finite
figure as null); a NaN or Infinity literal is not JSON as llmc writes it."""
import json
from pathlib import Path
from typing import Iterator, Tuple

from ..errors import LlmcError

OBJECT, TEXT, NUMBER, NUMBERS = "an object", "a string", "a number", "a list of numbers"
LIST = "a list"

# dotted path ("*": any key) -> its type; parents before children
FIELDS = {
    "config": OBJECT, "config.model": OBJECT, "config.calib": OBJECT, "config.eval": OBJECT,
    "config.sparse": OBJECT, "config.sparse.weight": OBJECT, "config.sparse.method": TEXT,
    "method": OBJECT, "method.name": TEXT, "method.base": OBJECT, "method.base.name": TEXT,
    "method.refine": OBJECT, "method.refine.name": TEXT, "method.update": OBJECT,
    "method.update.name": TEXT, "method.quantization": OBJECT,
    "ppl": OBJECT, "ppl.*": OBJECT, "ppl.*.*": NUMBER,
    "tasks": OBJECT, "tasks.*": OBJECT, "tasks.*.*": OBJECT, "tasks.*.*.*": NUMBER,
    "sparsity": OBJECT, "sparsity.overall": NUMBER, "sparsity.per_block": NUMBERS,
    "sparsity.per_linear": OBJECT, "sparsity.per_linear.*": NUMBER,
    "timings": OBJECT, "timings.*": NUMBER, "inputs": OBJECT, "inputs.model": OBJECT,
    "bench": OBJECT, "bench.models": LIST,
    "structure": OBJECT, "structure.method": OBJECT, "structure.method.name": TEXT,
    "structure.blocks": OBJECT, "structure.blocks.*": NUMBER, "structure.blocks_removed": NUMBERS,
    "structure.widths": LIST, "structure.parameters": OBJECT, "structure.parameters.*": NUMBER,
    "structure.checkpoint_bytes": OBJECT, "structure.checkpoint_bytes.*": NUMBER,
}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_type(value, kind: str) -> bool:
    if kind == OBJECT:
        return isinstance(value, dict)
    if kind == TEXT:
        return isinstance(value, str)
    if kind == NUMBER:
        return _is_number(value)
    if kind == LIST:
        return isinstance(value, list)
    return isinstance(value, list) and all(v is None or _is_number(v) for v in value)


def _found(value, keys, prefix="") -> Iterator[Tuple[str, object]]:
    """(dotted name, value) of every field matching `keys` under `value` (a dict)."""
    if not keys:
        yield prefix[:-1], value
        return
    if not isinstance(value, dict):
        return  # the parent is reported by its own entry
    names = value.keys() if keys[0] == "*" else [keys[0]] if keys[0] in value else []
    for name in names:
        yield from _found(value[name], keys[1:], f"{prefix}{name}.")


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_fields(results: dict, path: Path) -> None:
    for pattern, kind in FIELDS.items():
        for name, value in _found(results, pattern.split(".")):
            if value is not None and not _has_type(value, kind):
                raise LlmcError(f"report: {path}: the field {name} is {_shown(value)}, not "
                                f"{kind} as llmc writes it; fix it or leave the file out")


def refuse_non_finite(literal: str):
    """json.loads' parse_constant: NaN, Infinity and -Infinity are not in a results.json."""
    raise ValueError(f"{literal} is not a JSON number (llmc writes a non-finite figure as null "
                     "and lists it under non_finite)")
