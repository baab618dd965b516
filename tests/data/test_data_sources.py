"""Local copies in every supported format load to the same rows in file order; bad paths and
files give LlmcErrors that name the problem; hub calls are the reference ones and fail helpfully."""
import gzip
import json

import datasets
import pytest
import zstandard
from datasets import Dataset, DatasetDict

from llmc.data import load_local
from llmc.data.sources import CALIB_SPLITS, EVAL_SPLITS, LOCAL_FORMATS
from llmc.errors import LlmcError
from llmc.registry import DATASETS

# Order matters (samplers index rows), so rows differ and include an empty one, inner spaces
# and non-ASCII text.
TEXTS = [f"row {i} " + "word " * (i % 7) for i in range(40)]
TEXTS[3] = ""
TEXTS[5] = "  padded  "
TEXTS[8] = "naïve café ✓ 東京"


@pytest.fixture(autouse=True)
def private_hf_cache(tmp_path, monkeypatch):
    """datasets caches parsed files; keep that out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def json_lines(records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_all_formats(root, texts, key="text"):
    """{suffix: path} for one file (or save_to_disk dir) per format holding `texts`."""
    records = [{key: t, "meta": {"index": i}} for i, t in enumerate(texts)]
    paths = {}
    paths[".jsonl"] = root / "rows.jsonl"
    paths[".jsonl"].write_text(json_lines(records), encoding="utf-8")
    paths[".json"] = root / "rows.json"  # a JSON array, not lines
    paths[".json"].write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    paths[".json.gz"] = root / "c4-shard.json.gz"  # JSON lines, gzip (the c4 layout)
    with gzip.open(paths[".json.gz"], "wt", encoding="utf-8") as f:
        f.write(json_lines(records))
    paths[".jsonl.gz"] = root / "rows.jsonl.gz"
    with gzip.open(paths[".jsonl.gz"], "wt", encoding="utf-8") as f:
        f.write(json_lines(records))
    paths[".jsonl.zst"] = root / "val.jsonl.zst"  # JSON lines, zstandard (the pile layout)
    paths[".jsonl.zst"].write_bytes(
        zstandard.ZstdCompressor().compress(json_lines(records).encode("utf-8")))
    paths[".parquet"] = root / "rows.parquet"
    Dataset.from_list(records).to_parquet(str(paths[".parquet"]))
    paths[".txt"] = root / "rows.txt"
    paths[".txt"].write_text("\n".join(texts) + "\n", encoding="utf-8")
    paths["dataset"] = root / "saved-dataset"
    Dataset.from_list(records).save_to_disk(str(paths["dataset"]))
    paths["datasetdict"] = root / "saved-dict"
    other = [{key: "not this split", "meta": {"index": 0}}]
    DatasetDict({"train": Dataset.from_list(records), "test": Dataset.from_list(other)}
                ).save_to_disk(str(paths["datasetdict"]))
    return paths


def test_every_local_format_gives_the_same_rows_in_file_order(tmp_path):
    paths = write_all_formats(tmp_path, TEXTS)
    assert {p for p in paths if p.startswith(".")} == set(LOCAL_FORMATS)
    for kind, path in paths.items():
        rows = load_local(str(path), "text", CALIB_SPLITS)
        assert list(rows["text"]) == TEXTS, kind


def test_txt_keeps_empty_lines_and_strips_only_line_endings(tmp_path):
    path = tmp_path / "windows-endings.txt"
    path.write_bytes(b"first\r\n\r\n  second  \r\nlast without newline")
    assert list(load_local(str(path), "sentence")["sentence"]) == [
        "first", "", "  second  ", "last without newline"]


def test_json_keeps_raw_control_characters_and_skips_blank_lines(tmp_path):
    # JSON forbids a raw tab inside a string; datasets read one in an array, llmc reads it in
    # both layouts. A UTF-8 byte-order mark and blank lines (also '\r\n' ones) are no rows.
    lines = tmp_path / "tabs.jsonl"
    lines.write_bytes(b'\xef\xbb\xbf{"text": "a\tb"}\r\n\r\n\n{"text": "c"}')
    array = tmp_path / "tabs.json"
    array.write_bytes(b'[{"text": "a\tb"},\n {"text": "c"}]')
    for path in (lines, array):
        assert list(load_local(str(path), "text")["text"]) == ["a\tb", "c"]


def test_other_key_column_is_read(tmp_path):
    paths = write_all_formats(tmp_path, TEXTS, key="sentence")
    assert list(load_local(str(paths[".jsonl"]), "sentence")["sentence"]) == TEXTS


def test_datasetdict_split_follows_the_role(tmp_path):
    def saved(name, splits):
        path = tmp_path / name
        DatasetDict({s: Dataset.from_dict({"text": [s]}) for s in splits}).save_to_disk(str(path))
        return str(path)

    def first_text(path, preference):
        return load_local(path, "text", preference)["text"][0]

    train_test_val = saved("ttv", ["train", "validation", "test"])
    assert first_text(train_test_val, CALIB_SPLITS) == "train"
    assert first_text(train_test_val, EVAL_SPLITS) == "test"
    assert first_text(saved("tv", ["train", "validation"]), EVAL_SPLITS) == "validation"
    only = saved("only", ["whatever"])
    assert first_text(only, CALIB_SPLITS) == first_text(only, EVAL_SPLITS) == "whatever"
    with pytest.raises(LlmcError, match="alpha, beta") as err:
        load_local(saved("ambiguous", ["alpha", "beta"]), "text", EVAL_SPLITS)
    assert "test or validation" in str(err.value)


def test_missing_text_column_names_path_wanted_and_present_columns(tmp_path):
    path = tmp_path / "wrong-column.jsonl"
    path.write_text(json_lines([{"content": "a", "url": "u"}]))
    with pytest.raises(LlmcError) as err:
        load_local(str(path), "text")
    message = str(err.value)
    assert str(path) in message and "'text'" in message
    assert "content" in message and "url" in message


def test_unknown_suffix_lists_supported_formats(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text\na\n")
    with pytest.raises(LlmcError, match="rows.csv") as err:
        load_local(str(path), "text")
    for suffix in LOCAL_FORMATS:
        assert suffix in str(err.value)


def test_missing_path_and_foreign_directory_are_llmc_errors(tmp_path):
    with pytest.raises(LlmcError, match="nowhere.jsonl"):
        load_local(str(tmp_path / "nowhere.jsonl"), "text")
    (tmp_path / "plain-dir").mkdir()
    with pytest.raises(LlmcError, match="save_to_disk"):
        load_local(str(tmp_path / "plain-dir"), "text")


def test_malformed_file_error_names_the_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n{"text": \n')
    with pytest.raises(LlmcError, match="broken.jsonl"):
        load_local(str(path), "text")


def test_registry_entries():
    assert DATASETS["ptb"].key == "sentence"
    assert all(DATASETS[n].key == "text" for n in ("pileval", "c4", "wikitext2", "builtin"))
    assert [n for n, s in DATASETS.items() if not s.needs_path] == ["builtin"]
    assert [n for n, s in DATASETS.items() if not s.supports_eval] == ["pileval"]
    with pytest.raises(LlmcError, match="no evaluation split"):
        DATASETS["pileval"].eval_rows(download=False, path="/anything")


def test_local_role_without_path_asks_for_one():
    with pytest.raises(LlmcError, match="calib.path"):
        DATASETS["c4"].calib_rows(download=False, path=None)


HUB_CALLS = {
    ("pileval", "calib"): (("mit-han-lab/pile-val-backup",), {"split": "validation"}),
    ("c4", "calib"): (("allenai/c4",), {
        "data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}, "split": "train"}),
    ("c4", "eval"): (("allenai/c4",), {
        "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"},
        "split": "validation"}),
    ("wikitext2", "calib"): (("wikitext", "wikitext-2-raw-v1"), {"split": "train"}),
    ("wikitext2", "eval"): (("wikitext", "wikitext-2-raw-v1"), {"split": "test"}),
    ("ptb", "calib"): (("ptb_text_only", "penn_treebank"), {"split": "train"}),
    ("ptb", "eval"): (("ptb_text_only", "penn_treebank"), {"split": "test"}),
}


def test_download_makes_the_reference_hub_calls(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return Dataset.from_dict({"text": ["x"], "sentence": ["x"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for (name, role), expected in HUB_CALLS.items():
        spec = DATASETS[name]
        rows = (spec.calib_rows if role == "calib" else spec.eval_rows)(True, None)
        assert calls[-1] == expected and list(rows[spec.key]) == ["x"], (name, role)


def test_download_failure_explains_network_and_local_path(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(LlmcError) as err:
        DATASETS["wikitext2"].eval_rows(download=True, path=None)
    message = str(err.value)
    assert "network" in message and "eval.path" in message and "no route" in message
