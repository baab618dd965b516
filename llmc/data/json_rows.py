"""The text column of a JSON data file (.jsonl, .json, .json.gz, .jsonl.gz, .jsonl.zst), read
with the standard library so that every problem can be named by line.

Two layouts, as `datasets` accepts them: JSON lines (one object per line, blank lines skipped;
the c4 shards and pile's val.jsonl.zst) and one JSON array of objects (a file whose first
character is '['). Rows keep the file's order. Control characters such as a raw tab are
accepted inside strings (strict=False), as `datasets` accepted them in arrays. Nothing is
cached: the rows always come from the bytes on disk, so an edit that keeps a file's size and
mtime cannot be served stale (the `datasets` json loader keys its cache on path, size and mtime).
"""
import json
from typing import Iterator, List

from ..errors import LlmcError
from .file_bytes import Line, byte_chunks, decode_utf8, lines
from .text_column import text_value

BOM = "\ufeff"
ARRAY_CHUNK_ROWS = 8192  # strings per arrow chunk, so that no one list holds a whole corpus


def layout_hint(key):
    return (f"a JSON data file holds one object per line (JSON lines) or one JSON array of "
            f"objects, each with its text as a string in '{key}'")


def read_json_text(path, key: str):
    """Column `key` of every row, as a pyarrow ChunkedArray of strings in file order."""
    import pyarrow as pa

    texts = _texts(path, key)
    chunks, batch = [], []
    for text in texts:
        batch.append(text)
        if len(batch) == ARRAY_CHUNK_ROWS:
            chunks.append(pa.array(batch, pa.string()))
            batch = []
    if batch or not chunks:
        chunks.append(pa.array(batch, pa.string()))
    return pa.chunked_array(chunks, pa.string())


def _texts(path, key) -> Iterator[str]:
    chunks = byte_chunks(path)
    head = []
    for chunk in chunks:  # enough of the start to see the first character that is not space
        head.append(chunk)
        start = b"".join(head).lstrip(b"\xef\xbb\xbf \t\r\n")
        if start:
            break
    else:
        return iter(())  # empty or only whitespace: the caller reports no rows
    rest = _chain(head, chunks)
    if start.startswith(b"["):
        return iter(_array_texts(path, key, b"".join(rest)))
    return _line_texts(path, key, lines(rest))


def _chain(head, chunks):
    yield from head
    yield from chunks


def _line_texts(path, key, file_lines: Iterator[Line]) -> Iterator[str]:
    first_row = True
    for line in file_lines:
        text = decode_utf8(line.data, path, line.offset, line.number)
        if line.number == 1 and text.startswith(BOM):
            text = text[1:]
        if not text or text.isspace():
            continue
        where = f"'{path}' line {line.number}"
        try:
            row = json.loads(text, strict=False)
        except json.JSONDecodeError as err:
            if first_row and _is_one_object(path):  # pretty-printed: fails on its first line
                raise LlmcError(f"'{path}' is one JSON object written over several lines, not "
                                f"rows; {layout_hint(key)}") from None
            raise LlmcError(f"{where}, column {err.colno}: not valid JSON ({err.msg}); "
                            f"{layout_hint(key)}") from None
        first_row = False
        value = text_value(row, key, where)
        if "\\u" in text:
            _require_characters(value, key, where)
        yield value


def _is_one_object(path) -> bool:
    """Whether the whole file parses as one JSON object (read again: only on the error path)."""
    try:
        return isinstance(json.loads(b"".join(byte_chunks(path)).decode("utf-8-sig")), dict)
    except (ValueError, LlmcError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False


def _array_texts(path, key, content: bytes) -> List[str]:
    text = decode_utf8(content, path)
    try:
        rows = json.loads(text.lstrip(BOM), strict=False)  # a list: it starts with '['
    except json.JSONDecodeError as err:
        raise LlmcError(f"'{path}' line {err.lineno}, column {err.colno}: not valid JSON "
                        f"({err.msg}); {layout_hint(key)}") from None
    texts = []
    for index, row in enumerate(rows):
        where = f"'{path}' row index {index} of its JSON array"
        value = text_value(row, key, where)
        _require_characters(value, key, where)
        texts.append(value)
    return texts


def _require_characters(value: str, key, where):
    """A JSON \\u escape can spell half of a UTF-16 surrogate pair, which Python keeps in the
    string but no tokenizer accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise LlmcError(f"{where}: '{key}' holds the escape \\u{ord(value[err.start]):04x}, "
                        "half of a UTF-16 surrogate pair and not a character; fix or remove "
                        "that row") from None
