"""Reading a config: YAML text (anchors work, `2:4` stays a string), `--set a.b=c` overrides,
and the typed build of nested dataclasses with one clear error per wrong key or type. It knows
no schema: llmc.config defines the dataclasses and validates them; methods declare their own
settings with `setting()`."""
import dataclasses
import re
import typing
from typing import Dict, List, Optional, Union

import yaml

from .errors import ConfigError
from .registry import closest


def yaml_key(f) -> str:
    """The YAML key of a dataclass field (a field may not be named after a Python keyword)."""
    return f.metadata.get("key", f.name)


def setting(default=dataclasses.MISSING, doc: str = "", *, factory=dataclasses.MISSING,
            key: Optional[str] = None):
    """A documented config field: `blocksize: int = setting(128, "columns per block")`.
    `factory` for a nested settings dataclass; `key` when the YAML key is a Python keyword."""
    metadata = {"doc": doc, **({"key": key} if key else {})}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_default(f):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def extra_keys_field(cls):
    """The field of `cls` that collects keys declared elsewhere (SparseCfg.settings), or None.
    Its metadata["extra_keys"] is a callable giving {YAML key: type hint} of those keys."""
    found = [f for f in dataclasses.fields(cls) if "extra_keys" in f.metadata]
    return found[0] if found else None


def to_dict(value):
    """A config as YAML keys and plain values. A dataclass may say how it is written
    (`as_yaml()`: SparseCfg writes the settings its method uses, flat)."""
    if hasattr(value, "as_yaml"):
        return value.as_yaml()
    if dataclasses.is_dataclass(value):
        return {yaml_key(f): to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [to_dict(v) for v in value]
    if isinstance(value, dict):
        return {k: to_dict(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 base-60 integers, so `sparsity_type: 2:4` stays the string '2:4'."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` to the raw dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set '{assignment}' must look like section.key=value")
    dotted, value = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set '{assignment}': empty key in '{dotted}'")
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set '{assignment}': '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = parse_yaml(value) if value.strip() else None


# ---------------------------------------------------------------- typed build


def _check_type(value, hint, where):
    """Return `value` as type `hint` (ints accepted for floats) or raise a ConfigError."""
    origin = typing.get_origin(hint)
    if origin is Union:
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, where)
            except ConfigError:
                pass
        names = " or ".join(_type_name(o) for o in typing.get_args(hint))
        raise ConfigError(f"{where} must be {names}, got {value!r}")
    if hint is type(None):
        if value is None:
            return None
    elif origin in (list, List):
        if isinstance(value, list):
            (item,) = typing.get_args(hint)
            return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin in (dict, Dict):
        if isinstance(value, dict):
            _, item = typing.get_args(hint)
            return {str(k): _check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint):
    origin = typing.get_origin(hint)
    if origin in (list, List):
        return "a list"
    if origin in (dict, Dict):
        return "a mapping"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))


def _typed(value, hint, where):
    return build(hint, value, where) if dataclasses.is_dataclass(hint) else \
        _check_type(value, hint, where)


def build(cls, raw, prefix=""):
    """`cls` from the mapping `raw`: every key known, every value of its field's type. Keys
    declared elsewhere (see extra_keys_field) are typed by their declaration and collected in
    that field, as {YAML key: value}."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"'{prefix or 'config'}' must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    extra = extra_keys_field(cls)
    fields = {yaml_key(f): f.name for f in dataclasses.fields(cls) if f is not extra}
    declared = extra.metadata["extra_keys"]() if extra else {}
    known = list(fields) + list(declared)
    for key in raw:
        if key not in fields and key not in declared:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown key '{where}'{closest(str(key), known)}; valid keys "
                              f"here: {', '.join(known)}")
    values = {}
    for key, name in fields.items():
        if key in raw:
            values[name] = _typed(raw[key], hints[name], f"{prefix}.{key}" if prefix else key)
    if extra:
        values[extra.name] = {key: _typed(value, declared[key], f"{prefix}.{key}" if prefix
                                          else key)
                              for key, value in raw.items() if key in declared}
    return cls(**values)
