"""Reading a config: `--set a.b=c` overrides on the raw values (the YAML text itself is read by
llmc.config.yaml_text), and the typed build of nested dataclasses with one clear error per wrong
key or type. It knows no schema: llmc.config.schema defines the dataclasses, llmc.config.checks
validates them; methods
declare their own settings with `setting()`."""
import dataclasses
import math
import typing
from typing import Dict, List, Optional, Union

from ..errors import ConfigError
from ..registry import closest
from .yaml_text import parse_yaml


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


# ---------------------------------------------------------------- --set overrides


def _shown(text: str) -> str:
    """`text` on one printable line: control characters and bytes the shell could not decode
    are written as escapes (\\x00, \\udcff)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def schema_hint(cls, keys):
    """The type hint of the key at dotted path `keys` in dataclass `cls` (a method key typed by
    its declaration), or None where the path leaves the schema (build names unknown keys)."""
    hint = cls
    for key in keys:
        if not dataclasses.is_dataclass(hint):
            return None
        extra = extra_keys_field(hint)
        fields = {yaml_key(f): f.name for f in dataclasses.fields(hint) if f is not extra}
        declared = extra.metadata["extra_keys"]() if extra else {}
        if key in fields:
            hint = typing.get_type_hints(hint)[fields[key]]
        elif key in declared:
            hint = declared[key]
        else:
            return None
    return hint


def apply_override(raw: dict, assignment: str, schema=None) -> None:
    """Apply one `a.b.c=value` to the raw dict; the value is parsed as YAML. With `schema` (the
    Config dataclass) a section is never replaced: a mapping given for it is merged key by key
    into what the file set, and null is refused (it would reset the whole section silently)."""
    where = f"--set '{_shown(assignment)}'"
    if "=" not in assignment:
        raise ConfigError(f"{where} must look like section.key=value, e.g. "
                          "sparse.weight.sparsity=0.6")
    dotted, text = assignment.split("=", 1)
    keys = [key.strip() for key in dotted.split(".")]
    if not all(keys):
        raise ConfigError(f"{where}: empty key in '{_shown(dotted)}'; write section.key=value, "
                          "e.g. sparse.weight.sparsity=0.6")
    value = parse_yaml(text, where, command_line=True) if text.strip() else None
    set_dotted(raw, dotted, value, where, schema)


def set_dotted(raw: dict, dotted: str, value, where: str, schema=None) -> None:
    """Set the key at `dotted` (a.b.c) in the raw dict to `value` (already parsed), as
    apply_override does; `where` names the override in errors."""
    keys = [key.strip() for key in dotted.split(".")]
    if not all(keys):
        raise ConfigError(f"{where}: empty key in '{_shown(dotted)}'; write section.key, "
                          "e.g. sparse.weight.sparsity")
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:  # absent, or a section left empty in the file (`sparse:`)
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{where}: '{'.'.join(keys[:depth + 1])}' is a value, not a "
                              "section with keys inside")
        node = child
    _assign(node, keys, value, schema, where)


def _assign(node: dict, keys, value, schema, where) -> None:
    hint = schema_hint(schema, keys) if schema is not None else None
    if not dataclasses.is_dataclass(hint):
        node[keys[-1]] = value
        return
    dotted = ".".join(str(k) for k in keys)
    if value is None:
        example = yaml_key(dataclasses.fields(hint)[0])
        raise ConfigError(f"{where}: {dotted} is a section; null would silently reset all of it "
                          f"to the defaults. Set the keys inside it instead, e.g. "
                          f"--set {dotted}.{example}=...")
    if not isinstance(value, dict):
        node[keys[-1]] = value  # build says it must be a mapping
        return
    section = node.get(keys[-1])
    if not isinstance(section, dict):
        section = node[keys[-1]] = {}
    for key, inner in value.items():
        _assign(section, list(keys) + [key], inner, schema, where)

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
            if not -2 ** 63 <= value < 2 ** 63:  # torch and numpy take 64-bit integers
                raise ConfigError(f"{where} {value} is out of range (64-bit integers only)")
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                number = math.inf
            if not math.isfinite(number):  # nan passes every `<` check silently
                raise ConfigError(f"{where} must be a finite number, got {value}")
            return number
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
