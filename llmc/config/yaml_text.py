"""YAML text into plain values, for a config file or one `--set` value, with one ConfigError per
failure that names where (the file or the --set, line and column) and what to do.

The loader is PyYAML's SafeLoader with three changes: no YAML 1.1 base-60 integers (so
`sparsity_type: 2:4` stays the string '2:4'), exponents read as numbers as YAML 1.2 reads them
(`1e-2`), and a key repeated in one mapping is an error instead of the last one silently
winning. Merge keys (`<<: *defaults`) keep their meaning: a key written beside the merge
overrides the merged one. Tags that would build Python objects (`!!python/object`) are refused,
as SafeLoader does, with a message instead of a traceback.
"""
import re

import yaml
from yaml.constructor import ConstructorError

from ..errors import ConfigError

MAX_CONFIG_BYTES = 16 * 2 ** 20  # far above any config; keeps `--config /dev/zero` from hanging
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader without base-60 integers, refusing repeated keys; `source` names the text in
    errors."""

    def __init__(self, text, source):
        super().__init__(text)
        self.source = source
        self._checked = set()  # mapping nodes already checked (merging flattens them in place)

    def flatten_mapping(self, node):
        # Runs on every mapping before it is built, and on each mapping merged into another,
        # before merging moves the merged keys in: the one moment a node holds only its own keys.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._refuse_repeated_keys(node)
        super().flatten_mapping(node)

    def _refuse_repeated_keys(self, node):
        first_line = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue  # merges may repeat; a non-scalar key is SafeLoader's error to give
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(
                    f"{self.source}: key '{key}' is given twice in one mapping, on line "
                    f"{first_line[key]} and line {line}; keep one (YAML would silently use the "
                    "last)")
            first_line[key] = line


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.1 reads 1e-2 (no dot, or no exponent sign) as a string; YAML 1.2 and every user mean
# the number.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


# A command-line argument holds the bytes of a file name that do not decode in the locale (a
# UTF-8 name under LC_ALL=C without UTF-8 mode, a Latin-1 name) as U+DC80..U+DCFF (Python's
# surrogateescape), which YAML cannot hold: they pass the parser as plane-16 private-use
# characters and come back unchanged, so the path names the same file.
_ESCAPED, _PARKED = 0xDC80, 0x10FF80


def _park(text: str) -> str:
    return "".join(chr(ord(c) - _ESCAPED + _PARKED) if 0xDC80 <= ord(c) <= 0xDCFF else c
                   for c in text)


def _unpark(value):
    if isinstance(value, str):
        return "".join(chr(ord(c) - _PARKED + _ESCAPED) if ord(c) >= _PARKED else c
                       for c in value)
    if isinstance(value, list):
        return [_unpark(v) for v in value]
    if isinstance(value, dict):
        return {_unpark(k): _unpark(v) for k, v in value.items()}
    return value


def parse_yaml(text: str, source: str = "YAML text", command_line: bool = False):
    """The value `text` holds; `source` (e.g. "config file 'a.yml'") names it in errors;
    `command_line`: text from argv, whose undecodable file-name bytes are kept (above)."""
    try:
        loader = _Loader(_park(text) if command_line else text, source)  # reads the text: a
        try:                                                # control character fails here
            value = loader.get_single_data()
            return _unpark(value) if command_line else value
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(_describe(err, text, source)) from None
    except RecursionError:
        raise ConfigError(f"{source} nests lists or mappings too deeply to be a config") from None


def _describe(err, text, source) -> str:
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, err.position) + 1
        char = (f"U+{err.character:04X}" if isinstance(err.character, int)
                else repr(err.character))
        return (f"{source}, line {line}: character {char} is not allowed in YAML "
                f"({err.reason}); remove it")
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = "" if not mark else (f", line {mark.line + 1}, column {mark.column + 1}" if "\n" in text
                                 else f", column {mark.column + 1} of the value")
    problem = getattr(err, "problem", None) or str(err)
    tag = re.search(r"constructor for the tag '([^']*)'", problem)
    if isinstance(err, ConstructorError) and tag:
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return (f"{source}{where}: the tag '{shown}' is not allowed: a config holds plain "
                "values (mappings, lists, strings, numbers, true/false, null) and builds no "
                "objects; remove the tag")
    context = getattr(err, "context", None)
    return (f"{source} is not valid YAML{where}: {problem}" + (f" ({context})" if context else "")
            + "; quote values that contain YAML syntax such as : [ ] { } # &")


def read_config_file(path: str):
    """The value a config file holds, or one ConfigError naming the file and the fix."""
    name = f"config file '{path}'"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{name} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{name} is a directory; pass the YAML file itself, e.g. "
                          "configs/sparse/wanda.yml") from None
    except PermissionError:
        raise ConfigError(f"{name} cannot be read: permission denied; give yourself read "
                          "permission (chmod u+r) or copy it") from None
    except OSError as err:
        raise ConfigError(f"{name} cannot be read: {err.strerror or err}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name} is larger than {MAX_CONFIG_BYTES // 2 ** 20} MiB; that is not "
                          "a config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{name} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset "
                          f"{err.start} (line {line}); save it as UTF-8") from None
    return parse_yaml(text, name)
