"""Rows of a local copy of a dataset: a save_to_disk directory or a file in LOCAL_FORMATS.

Every reader returns a `datasets.Dataset` in the order of the source (the samplers index rows by
position), checked by `check_text_column`. Files are read from their bytes on every run, not
through the `datasets` cache, which keys a local file on its path, size and mtime and so would
serve the old rows after an edit that keeps both (e.g. `touch -r`, a copy with `cp -p`).
"""
import os
from typing import Tuple

from loguru import logger

from ..errors import LlmcError
from .file_bytes import byte_chunks, decode_utf8
from .json_rows import read_json_text
from .text_column import check_text_column

SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what save_to_disk writes at the top


def load_local(path: str, key: str, split_preference: Tuple[str, ...] = ("train",)):
    """Rows of a local copy as a datasets.Dataset, in file order, whose column `key` holds a
    string in every row.

    `path` is a save_to_disk directory (a Dataset, or a DatasetDict whose split is chosen by
    `split_preference`, else its only split) or a file in one of LOCAL_FORMATS.
    """
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise LlmcError(f"dataset path '{path}' does not exist")
    if os.path.isdir(path):
        rows = _load_saved(path, split_preference)
    else:
        reader = _reader_for(path)
        if os.path.getsize(path) == 0:
            raise LlmcError(f"'{path}' is empty (0 bytes); it needs at least one row with text "
                            f"in '{key}'")
        rows = reader(path, key)
    rows = check_text_column(rows, key, f"'{path}'")
    logger.info(f"loaded {len(rows)} rows from '{path}'")
    return rows


def _load_saved(path, split_preference):
    from datasets import DatasetDict, load_from_disk

    if not any(os.path.isfile(os.path.join(path, name)) for name in SAVED_MARKERS):
        raise LlmcError(f"'{path}' is a directory but not one written by datasets' save_to_disk "
                        f"(it has no {' or '.join(SAVED_MARKERS)}); point at such a directory "
                        f"or at a {', '.join(LOCAL_FORMATS)} file")
    try:
        saved = load_from_disk(path)
    except Exception as err:  # a damaged copy: a missing or cut-short arrow file, bad metadata
        raise LlmcError(f"'{path}' is a save_to_disk directory that cannot be read "
                        f"({type(err).__name__}: {str(err)[:300]}); save the dataset "
                        "again") from err
    if not isinstance(saved, DatasetDict):
        return saved
    for split in split_preference:
        if split in saved:
            return saved[split]
    if len(saved) == 1:
        return next(iter(saved.values()))
    raise LlmcError(f"'{path}' holds splits {', '.join(saved)}, none of which is "
                    f"{' or '.join(split_preference)}; save the split you want on its own")


def _reader_for(path):
    name = os.path.basename(path).lower()
    for suffix, reader in _READERS:
        if name.endswith(suffix):
            return reader
    raise LlmcError(f"'{path}': unknown file format; supported are a save_to_disk directory or a "
                    f"file ending in {', '.join(LOCAL_FORMATS)}")


def _read_json(path, key):
    from datasets import Dataset

    return Dataset.from_dict({key: read_json_text(path, key)})


def _read_parquet(path, key):
    # Only the text column is read; pyarrow keeps the row groups' order.
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    try:
        names = pq.read_schema(path).names
        if key not in names:
            raise LlmcError(f"'{path}' has no text column '{key}'; its columns are: "
                            f"{', '.join(names) or '(none)'}")
        table = pq.read_table(path, columns=[key])
    except (pa.ArrowException, OSError) as err:
        raise LlmcError(f"'{path}' is not a readable parquet file ({type(err).__name__}: "
                        f"{str(err)[:300]}); write it again") from err
    return Dataset.from_dict({key: table.column(key)})


def _read_txt(path, key):
    # One record per line, line ending stripped; empty lines stay as empty records, so a row
    # index means the same line as in the file. A final line ending does not start a record.
    from datasets import Dataset

    text = decode_utf8(b"".join(byte_chunks(path)), path)
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines
    lines = text.split("\n")
    if text.endswith("\n") or not text:
        lines.pop()
    return Dataset.from_dict({key: lines})


# Longest suffix first, so that '.json.gz' is not taken for something else.
_READERS = (
    (".jsonl.zst", _read_json),
    (".json.gz", _read_json),
    (".jsonl.gz", _read_json),
    (".jsonl", _read_json),
    (".json", _read_json),
    (".parquet", _read_parquet),
    (".txt", _read_txt),
)
LOCAL_FORMATS = tuple(suffix for suffix, _ in _READERS)
