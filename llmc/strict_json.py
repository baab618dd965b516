"""results.json is strict JSON: a float that is not finite (a NaN or infinite perplexity) is
written as null, and where it was and what it was go into a `non_finite` entry, so every JSON
reader loads the file and no reader mistakes a broken value for a number."""
import json
import math


def replace_non_finite(value, where="", found=None):
    """(value with every non-finite float replaced by None, {dotted path: 'nan'/'inf'/'-inf'})."""
    found = {} if found is None else found
    if isinstance(value, float) and not math.isfinite(value):
        found[where] = str(value)
        return None, found
    if isinstance(value, dict):
        return {k: replace_non_finite(v, f"{where}.{k}" if where else str(k), found)[0]
                for k, v in value.items()}, found
    if isinstance(value, (list, tuple)):
        return [replace_non_finite(v, f"{where}[{i}]", found)[0]
                for i, v in enumerate(value)], found
    return value, found


def dumps_strict(results: dict) -> str:
    """`results` as strict JSON text (no NaN or Infinity tokens)."""
    clean, found = replace_non_finite(results)
    if found:
        clean["non_finite"] = {path: f"{kind}, written as null" for path, kind in found.items()}
    return json.dumps(clean, indent=2, allow_nan=False)
