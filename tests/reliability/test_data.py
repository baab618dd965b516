"""Bad data files, corpora too small for the config, stale caches, and the token-id digests.

Each bad file goes through the CLI in process: exit 2, one `llmc: error:` line naming the config
key, the file and the place in it (line, row index or byte offset) and the column, and no output
committed under save_path. The run stops in the data step, before the model is loaded.
"""
import gzip
import json
import os
import random

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard
from datasets import Dataset

from conftest import error_line, random_text
from llmc.config import CalibCfg
from llmc.data import calib_batches, load_local, preproc, token_ids_sha256, token_stream_sha256

GOOD = [json.dumps({"text": random_text(60, s)}) for s in range(4)]
OUTPUTS = ("results.json", "config.yml", "transformed_model")


@pytest.fixture(autouse=True)
def private_hf_cache(tmp_path, monkeypatch):
    """Keep `datasets`' cache in tmp_path (and shared by the loads of one test)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def run_on_calib(cli, run_config, path, *settings, evaluate=False):
    """The one error line of a run on calibration file `path` (exit 2 asserted), after checking
    that nothing was committed under save_path."""
    argv = ["--config", run_config, "--set", f"calib.path={path}", *settings]
    if not evaluate:
        argv += ["--set", "eval.eval_pos=[]"]
    code, stderr = cli(*argv)
    assert code == 2, stderr
    save = run_config.parent / "save"
    assert not any((save / name).exists() for name in OUTPUTS)
    return error_line(stderr)


def jsonl(*lines):
    return "".join(line + "\n" for line in lines).encode()


# ---------------------------------------------------------------- one bad row


ROWS = {  # a bad line 4 (after two good ones and a blank line): what the message says
    "null": ('{"text": null}', "'text' is null"),
    "number": ('{"text": 5}', "'text' is a number (5)"),
    "list": ('{"text": ["a", "b"]}', "'text' is a list"),
    "object": ('{"text": {"a": 1}}', "'text' is an object"),
    "boolean": ('{"text": false}', "'text' is a boolean (false)"),
    "missing column": ('{"content": "x", "url": "u"}',
                       "no 'text' field (its fields: content, url)"),
    "row is a string": ('"just text"', "line 4 is a string, not an object"),
    "row is an array": ('[1, 2]', "line 4 is a list, not an object"),
    "malformed": ('{"text": "cut sh', "line 4, column 10: not valid JSON"),
    "two objects": ('{"text": "a"} {"text": "b"}',
                    "line 4, column 15: not valid JSON (Extra data)"),
    "lone surrogate": ('{"text": "a\\udc80b"}', "\\udc80, half of a UTF-16 surrogate pair"),
}


@pytest.mark.parametrize("case", list(ROWS))
def test_a_bad_row_names_file_line_and_column(cli, run_config, tmp_path, case):
    bad, words = ROWS[case]
    path = tmp_path / "calib-rows.jsonl"
    path.write_bytes(jsonl(GOOD[0], GOOD[1], "", bad, GOOD[2]))
    line = run_on_calib(cli, run_config, path)
    assert f"calib.path: '{path}' line 4" in line and words in line, line


def test_the_text_column_is_the_datasets_own(cli, run_config, tmp_path):
    # ptb's text is in 'sentence'; a file with 'text' is named as lacking it on its first line.
    path = tmp_path / "ptb.train.jsonl"
    path.write_bytes(jsonl(*GOOD))
    line = run_on_calib(cli, run_config, path, "--set", "calib.name=ptb",
                        "--set", "calib.preproc=ptb_gptq")
    assert f"'{path}' line 1 has no 'sentence' field (its fields: text)" in line, line


def test_a_bad_row_in_the_evaluation_file_names_eval_path(cli, run_config, tmp_path):
    path = tmp_path / "wiki-test.jsonl"
    path.write_bytes(jsonl(GOOD[0], '{"text": 3.5}'))
    line = run_on_calib(cli, run_config, tmp_path / "calib.jsonl", "--set", f"eval.path={path}",
                        evaluate=True)
    assert f"eval.path: '{path}' line 2: 'text' is a number (3.5)" in line, line


# ---------------------------------------------------------------- the whole file


WHOLE_FILES = {
    "empty.jsonl": (b"", "is empty (0 bytes)"),
    "blank-lines.jsonl": (b"\n  \n\r\n\n", "holds no rows"),
    "blank-lines.txt": (b"\n \n\t\n", "has 3 rows, but every 'text' is empty or whitespace"),
    "empty-texts.jsonl": (jsonl('{"text": ""}', '{"text": "  "}'),
                          "has 2 rows, but every 'text' is empty or whitespace"),
    "empty-array.json": (b"[]", "holds no rows"),
    "strings.json": (b'["first text", "second text"]',
                     "row index 0 of its JSON array is a string, not an object"),
    "null-in-array.json": (b'[{"text": "a"}, {"text": null}]',
                           "row index 1 of its JSON array: 'text' is null"),
    "number.json": (b"42", "line 1 is a number (42), not an object"),
    "pretty.json": (b'{\n  "text": "one object over lines"\n}\n',
                    "is one JSON object written over several lines, not rows"),
    "cut-array.json": (b'[{"text": "a"}, {"te', "line 1, column 18: not valid JSON"),
}


@pytest.mark.parametrize("name", list(WHOLE_FILES))
def test_a_file_without_usable_rows_is_named(cli, run_config, tmp_path, name):
    content, words = WHOLE_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    line = run_on_calib(cli, run_config, path)
    assert f"calib.path: '{path}'" in line and words in line, line


# ---------------------------------------------------------------- encodings and archives


def _gzip(data):
    return gzip.compress(data, mtime=0)


NOT_UTF8 = {  # name: the bytes on disk (the content is gzip-compressed for .gz)
    "latin1.jsonl": jsonl(GOOD[0]) + b'{"text": "caf\xe9"}\n',
    "latin1.txt": "first line\r\nsecond\r\nna\xefve third\n".encode("latin-1"),
    "binary.json.gz": _gzip(jsonl(GOOD[0], GOOD[1]) + b'{"text": "\xff\xfe"}\n'),
}


@pytest.mark.parametrize("name, line_number", [
    ("latin1.jsonl", 2), ("latin1.txt", 3), ("binary.json.gz", 3)])
def test_non_utf8_bytes_are_named_by_absolute_offset(cli, run_config, tmp_path, name,
                                                    line_number):
    data = NOT_UTF8[name]
    path = tmp_path / name
    path.write_bytes(data)
    content = gzip.decompress(data) if name.endswith(".gz") else data
    bad = next(i for i, b in enumerate(content) if b >= 0x80)
    line = run_on_calib(cli, run_config, path)
    assert f"calib.path: '{path}' is not UTF-8 text" in line, line
    where = f"byte offset {bad}" + (" of its decompressed content" if name.endswith(".gz")
                                    else "")
    assert f"{where} (line {line_number})" in line, line


def test_utf16_file_is_named_as_utf16(cli, run_config, tmp_path):
    path = tmp_path / "utf16.jsonl"
    path.write_bytes("\n".join(GOOD).encode("utf-16"))
    line = run_on_calib(cli, run_config, path)
    assert "UTF-16 byte-order mark" in line and "byte offset 0 (line 1)" in line, line


def _archives():
    rows = jsonl(*GOOD * 200)
    gz, zst = _gzip(rows), zstandard.ZstdCompressor().compress(rows)
    flipped = bytearray(gz)
    flipped[len(gz) // 2] ^= 0xFF
    return {
        "cut.jsonl.gz": (gz[:len(gz) // 2], "not a valid gzip file, or it is cut short"),
        "flipped.json.gz": (bytes(flipped), "not a valid gzip file, or it is cut short"),
        "plain.jsonl.gz": (rows, "not a valid gzip file"),
        "cut.jsonl.zst": (zst[:len(zst) // 2], "ends in the middle of a zstandard frame"),
        "garbage.jsonl.zst": (b"\x28\xb5\x2f\xfd" + b"garbage", "not a valid zstandard file"),
    }


ARCHIVES = _archives()


@pytest.mark.parametrize("name", list(ARCHIVES))
def test_corrupt_or_cut_archives_are_named(cli, run_config, tmp_path, name):
    data, words = ARCHIVES[name]
    path = tmp_path / name
    path.write_bytes(data)
    line = run_on_calib(cli, run_config, path)
    assert f"calib.path: '{path}'" in line and words in line, line


# ---------------------------------------------------------------- parquet and saved datasets


def _parquet_cases():
    not_utf8 = pa.array([b"fine text", b"caf\xe9"], pa.binary()).view(pa.string())
    return {
        "no-column": (pa.table({"content": ["a"]}),
                      "has no text column 'text'; its columns are: content"),
        "null": (pa.table({"text": ["a", "b", None]}), "row index 2: 'text' is null"),
        "integers": (pa.table({"text": [1, 2]}), "column 'text' holds int64 values"),
        "not-utf8": (pa.table({"text": not_utf8}),
                     "row index 1: 'text' is not UTF-8 (byte offset 3 of that row's text)"),
        "no-rows": (pa.table({"text": pa.array([], pa.string())}), "holds no rows"),
    }


PARQUET = _parquet_cases()


@pytest.mark.parametrize("case", list(PARQUET))
def test_parquet_problems_name_file_row_and_column(cli, run_config, tmp_path, case):
    table, words = PARQUET[case]
    path = tmp_path / f"{case}.parquet"
    pq.write_table(table, path)
    line = run_on_calib(cli, run_config, path)
    assert f"calib.path: '{path}'" in line and words in line, line


def test_not_a_parquet_file_is_named(cli, run_config, tmp_path):
    path = tmp_path / "rows.parquet"
    path.write_bytes(jsonl(*GOOD))
    line = run_on_calib(cli, run_config, path)
    assert f"'{path}' is not a readable parquet file" in line, line


def test_saved_dataset_with_a_null_row_or_a_cut_arrow_file(cli, run_config, tmp_path):
    saved = tmp_path / "saved-nulls"
    Dataset.from_dict({"text": ["a b c", None]}).save_to_disk(str(saved))
    line = run_on_calib(cli, run_config, saved)
    assert f"'{saved}' row index 1: 'text' is null" in line, line
    cut = tmp_path / "saved-cut"
    Dataset.from_dict({"text": [random_text(200, s) for s in range(20)]}).save_to_disk(str(cut))
    arrow = next(cut.glob("*.arrow"))
    os.truncate(arrow, arrow.stat().st_size // 2)
    line = run_on_calib(cli, run_config, cut)
    assert f"'{cut}' is a save_to_disk directory that cannot be read" in line, line


# ---------------------------------------------------------------- corpus too small for the config


def calib_text(run_config):
    return [json.loads(line)["text"] for line in (run_config.parent / "calib.jsonl").open()]


def test_joined_stream_too_short_for_n_samples_says_how_many_it_holds(
        cli, run_config, tiny_tokenizer):
    total = len(tiny_tokenizer(" ".join(calib_text(run_config))).input_ids)
    most = total // 32
    line = run_on_calib(cli, run_config, run_config.parent / "calib.jsonl",
                        "--set", f"calib.n_samples={most + 1}")
    assert f"is only {total} tokens long: room for {most} windows of calib.seq_len=32" in line
    assert f"lower calib.n_samples to at most {most}" in line, line
    # ... and that many it does give (the config's own seed and window length)
    cfg = CalibCfg(name="wikitext2", path=str(run_config.parent / "calib.jsonl"),
                   preproc="wikitext2_gptq", n_samples=most, seq_len=32, seed=0)
    assert sum(b.shape[0] for b in calib_batches(cfg, tiny_tokenizer)) == most


def test_c4_gptq_with_too_few_long_documents_stops_with_the_count(cli, run_config, tmp_path):
    # 3 documents longer than 32 tokens and 40 short ones; the reference would cut 6 windows
    # from 3 documents (and with none it would draw for ever).
    texts = [random_text(2, s) for s in range(40)] + [random_text(80, s) for s in range(3)]
    random.Random(0).shuffle(texts)
    path = tmp_path / "c4-train.jsonl"
    path.write_bytes(jsonl(*(json.dumps({"text": t}) for t in texts)))
    line = run_on_calib(cli, run_config, path, "--set", "calib.name=c4",
                        "--set", "calib.preproc=c4_gptq")
    assert "only 3 of the 43 calibration documents are" in line, line
    assert "lower calib.n_samples to at most 3" in line, line


@pytest.mark.parametrize("preproc_name, words", [
    ("pileval_smooth", "made only 4 of calib.n_samples=6 windows from 4 rows"),
    ("txt_general_preproc", "made only 4 of calib.n_samples=6 windows from 4 rows"),
])
def test_row_samplers_with_too_few_rows_stop_with_the_count(cli, run_config, preproc_name,
                                                            words):
    line = run_on_calib(cli, run_config, run_config.parent / "calib.jsonl",
                        "--set", f"calib.preproc={preproc_name}")
    assert words in line, line


def test_a_sampler_that_falls_short_cannot_go_unnoticed(cli, run_config, monkeypatch):
    draw = preproc.random_windows
    monkeypatch.setattr(preproc, "random_windows", lambda *args: draw(*args)[:-1])
    line = run_on_calib(cli, run_config, run_config.parent / "calib.jsonl")
    assert "preproc 'wikitext2_gptq' made 5 calibration windows, not calib.n_samples=6" in line


# ---------------------------------------------------------------- the cache is keyed on content


def _same_size_edit(path, write):
    """Rewrite `path` with `write`, then give it back its old mtime and atime."""
    before = os.stat(path)
    write()
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".txt"])
def test_an_edit_keeping_size_and_mtime_is_read_anew(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"

    def write(texts):
        if suffix == ".parquet":
            pq.write_table(pa.table({"text": texts}), path, compression="none")
        elif suffix == ".txt":
            path.write_text("\n".join(texts) + "\n")
        elif suffix == ".json":
            path.write_text(json.dumps([{"text": t} for t in texts]))
        else:
            path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    write(["alpha one", "beta two"])
    assert list(load_local(str(path), "text")["text"]) == ["alpha one", "beta two"]
    _same_size_edit(path, lambda: write(["gamma one", "zeta two"]))
    assert list(load_local(str(path), "text")["text"]) == ["gamma one", "zeta two"]


# ---------------------------------------------------------------- token id digests


def test_token_digests_follow_ids_and_shapes_only():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 300, (2, 8), generator=gen) for _ in range(3)]
    digest = token_ids_sha256(batches)
    assert len(digest) == 64
    # equal ids: other tensors, other integer dtype, non-contiguous storage
    assert token_ids_sha256([b.clone().to(torch.int32) for b in batches]) == digest
    assert token_ids_sha256([b.t().contiguous().t() for b in batches]) == digest
    # one id changed, order changed, or the same ids cut into other shapes
    changed = [b.clone() for b in batches]
    changed[2][1, 7] += 1
    assert token_ids_sha256(changed) != digest
    assert token_ids_sha256(batches[::-1]) != digest
    assert token_ids_sha256([torch.cat(batches)]) != digest
    assert token_ids_sha256([b.reshape(1, 16) for b in batches]) != digest


def test_token_digest_is_the_documented_bytes():
    # shape then ids, as int64 little-endian: recomputable without llmc (and without a device)
    import hashlib

    import numpy as np

    stream = torch.tensor([[5, 300, 2 ** 40]])
    expected = hashlib.sha256(np.asarray([2, 1, 3], "<i8").tobytes()
                              + np.asarray([5, 300, 2 ** 40], "<i8").tobytes()).hexdigest()
    assert token_stream_sha256(stream) == expected == token_ids_sha256([stream])
    assert token_ids_sha256([]) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(TypeError):
        token_stream_sha256(torch.zeros(1, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_token_digest_is_the_same_on_a_gpu():
    stream = torch.arange(1000).view(1, -1)
    assert token_stream_sha256(stream.cuda()) == token_stream_sha256(stream)
