"""The one promise every source of rows keeps: column `key` holds a string in every row, and some
row holds more than whitespace.

A row that breaks it would otherwise reach the tokenizer (a traceback) or be joined into the
calibration text as 'None' (a silent wrong result). Readers that know lines check each row as
they parse it (`text_value`, so the error can name the line); `check_text_column` checks a
finished `datasets.Dataset` (parquet, save_to_disk directories, the hub) with arrow kernels.
"""
import json

from ..errors import LlmcError

BLANK_SCAN_ROWS = 4096  # rows per slice when looking for the first one with text


def describe(value) -> str:
    """A JSON value in JSON's words, e.g. 'null', 'a number (5)', 'a list'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def text_value(row, key: str, where: str) -> str:
    """row[key] when `row` is an object whose `key` is a string; else an LlmcError that starts
    with `where` (the file and line or row) and names the column."""
    if not isinstance(row, dict):
        raise LlmcError(f"{where} is {describe(row)}, not an object with its text in '{key}'; "
                        "each row must be a JSON object")
    if key not in row:
        fields = ", ".join(map(str, row)) or "none"
        raise LlmcError(f"{where} has no '{key}' field (its fields: {fields}); every row needs "
                        f"its text as a string in '{key}'")
    value = row[key]
    if not isinstance(value, str):
        raise LlmcError(f"{where}: '{key}' is {describe(value)}, not a string; every row needs "
                        f"its text as a string in '{key}' (fix or remove that row)")
    return value


def check_text_column(rows, key: str, where: str):
    """`rows` (a datasets.Dataset) when column `key` holds a string in every row and some row has
    more than whitespace; else an LlmcError that starts with `where` and names the row index.
    Row indices are those of the underlying arrow table (sources here have no indices mapping)."""
    from datasets import Value

    if key not in rows.column_names:
        raise LlmcError(f"{where} has no text column '{key}'; its columns are: "
                        f"{', '.join(rows.column_names) or '(none)'}")
    if len(rows) == 0:
        raise LlmcError(f"{where} holds no rows; it needs at least one row with text in '{key}'")
    feature = rows.features[key]
    if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        kind = feature.dtype if isinstance(feature, Value) else type(feature).__name__
        raise LlmcError(f"{where}: column '{key}' holds {kind} values (row index 0: "
                        f"{str(rows[0][key])[:60]!r}), not strings; the text column must be "
                        "strings")
    column = rows.data.column(key)
    if column.null_count:
        import pyarrow.compute as pc

        first = pc.index(pc.is_null(column), True).as_py()
        raise LlmcError(f"{where} row index {first}: '{key}' is null, not a string; every row "
                        f"needs its text in '{key}' (fix or remove that row)")
    _require_utf8(column, key, where)
    if not _some_text(column):
        rows_text = "1 row" if len(rows) == 1 else f"{len(rows)} rows"
        raise LlmcError(f"{where} has {rows_text}, but every '{key}' is empty or "
                        "whitespace: there is no text to tokenize")
    return rows


def _require_utf8(column, key, where):
    """Arrow strings read from a parquet file are not checked for UTF-8 until asked."""
    import pyarrow as pa

    try:
        column.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    for index, raw in enumerate(column.cast(pa.binary()).to_pylist()):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise LlmcError(f"{where} row index {index}: '{key}' is not UTF-8 (byte offset "
                            f"{err.start} of that row's text); write the text as UTF-8") from None
    raise LlmcError(f"{where}: column '{key}' is not valid arrow string data")


def _some_text(column) -> bool:
    """Whether any row has a character other than whitespace; usually the first slice says."""
    import pyarrow.compute as pc

    for begin in range(0, len(column), BLANK_SCAN_ROWS):
        part = column.slice(begin, BLANK_SCAN_ROWS)
        has_text = pc.and_(pc.greater(pc.utf8_length(part), 0),
                           pc.invert(pc.utf8_is_space(part)))
        if pc.any(has_text).as_py():
            return True
    return False
