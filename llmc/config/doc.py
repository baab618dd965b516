"""The method settings table of docs/config.md, generated from the methods' own declarations
(each method's Settings dataclass), so the reference never drifts from the code.

    python -m llmc.config.doc --write docs/config.md   # regenerate the table in place
    python -m llmc.config.doc --check docs/config.md   # exit 1 when it is stale (a test does this)
"""
import argparse
import dataclasses
import sys
from pathlib import Path

from .schema import declared_settings
from .typed import field_default, yaml_key

BEGIN = "<!-- method settings: generated from each method's Settings by `python -m llmc.config.doc --write docs/config.md` -->"
END = "<!-- end of generated method settings -->"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{value}`" if isinstance(value, bool) else str(value)


def _rows(key, f, users):
    """One row per leaf key; a nested settings dataclass (owl, mixgpt) expands to dotted keys."""
    default = field_default(f)
    if dataclasses.is_dataclass(default):
        for inner in dataclasses.fields(default):
            yield from _rows(f"{key}.{yaml_key(inner)}", inner, users)
        return
    doc = f.metadata.get("doc", "")
    yield f"| `{key}` | {_value(default)} | {', '.join(users)} | {doc} |"


def table() -> str:
    lines = ["| key | default | used by | meaning |", "|---|---|---|---|"]
    for key, (_, f, users) in declared_settings().items():
        lines.extend(_rows(key, f, users))
    return "\n".join(lines)


def regenerate(text: str) -> str:
    """`text` with the part between BEGIN and END replaced by the current table."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the file has no generated section; add the lines\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmc.config.doc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="FILE", help="regenerate FILE's table in place")
    action.add_argument("--check", metavar="FILE", help="exit 1 when FILE's table is stale")
    args = parser.parse_args(argv)
    if not args.write and not args.check:
        print(table())
        return 0
    path = Path(args.write or args.check)
    text = path.read_text()
    current = regenerate(text)
    if args.check:
        if current != text:
            print(f"{path}: the method settings table is stale; run python -m llmc.config.doc "
                  f"--write {path}", file=sys.stderr)
            return 1
        return 0
    path.write_text(current)
    return 0


if __name__ == "__main__":
    sys.exit(main())
