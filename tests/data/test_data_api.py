"""calib_batches and eval_tokens end to end on local copies: batching shapes, the reference
evaluation streams per dataset, path layouts and the errors for too little text."""
import gzip
import json
import logging
import random

import datasets
import pytest
import torch
from datasets import Dataset, DatasetDict

from llmc.config import CalibCfg, EvalCfg
from llmc.data import batch_windows, calib_batches, eval_tokens
from llmc.data.preproc import wikitext2_gptq
from llmc.errors import LlmcError

WORDS = "alpha beta gamma delta river city music film war king north south".split()


def text_of(n_words, seed):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


@pytest.fixture(autouse=True)
def private_hf_cache(tmp_path, monkeypatch):
    """datasets caches parsed files; keep that out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write_jsonl(path, texts, key="text"):
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts))
    return str(path)


def ids(tokenizer, text):
    return tokenizer(text, return_tensors="pt").input_ids


TRAIN = [text_of(3 + i % 11, i) for i in range(80)]
TEST = [text_of(4 + i % 5, 1000 + i) for i in range(30)]


# ---------------------------------------------------------------- calibration


@pytest.mark.parametrize("bs, shapes", [
    (1, [(1, 16)] * 5),
    (2, [(2, 16), (2, 16), (1, 16)]),
    (-1, [(5, 16)]),
])
def test_calib_batches_group_the_sampled_windows(tmp_path, tiny_tokenizer, bs, shapes):
    path = write_jsonl(tmp_path / "wiki.jsonl", TRAIN)
    cfg = CalibCfg(name="wikitext2", path=path, preproc="wikitext2_gptq", n_samples=5,
                   seq_len=16, bs=bs, seed=9)
    batches = calib_batches(cfg, tiny_tokenizer)
    assert [tuple(b.shape) for b in batches] == shapes
    windows = wikitext2_gptq(Dataset.from_dict({"text": TRAIN}), tiny_tokenizer, 5, 16, 9, "text")
    assert torch.equal(torch.cat(batches), torch.cat(windows))  # same windows, same order


def test_calib_batches_reads_ptb_sentence_column(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "ptb.jsonl", TRAIN, key="sentence")
    cfg = CalibCfg(name="ptb", path=path, preproc="ptb_gptq", n_samples=3, seq_len=8, bs=1)
    assert [tuple(b.shape) for b in calib_batches(cfg, tiny_tokenizer)] == [(1, 8)] * 3


def test_calib_batches_pileval_smooth_from_zst_keeps_variable_lengths(tmp_path, tiny_tokenizer):
    import zstandard

    path = tmp_path / "val.jsonl.zst"
    lines = "".join(json.dumps({"text": t, "meta": {"pile_set_name": "x"}}) + "\n" for t in TRAIN)
    path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    cfg = CalibCfg(name="pileval", path=str(path), preproc="pileval_smooth", n_samples=12,
                   seq_len=20, bs=1)
    batches = calib_batches(cfg, tiny_tokenizer)
    assert len(batches) == 12 and all(b.shape[0] == 1 and 0 < b.shape[1] <= 20 for b in batches)
    assert len({b.shape[1] for b in batches}) > 1


def test_batching_windows_of_different_lengths_is_refused():
    windows = [torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)]
    assert [tuple(b.shape) for b in batch_windows(windows, 1)] == [(1, 4), (1, 3)]
    with pytest.raises(LlmcError, match="different lengths"):
        batch_windows(windows, 2)


# ---------------------------------------------------------------- evaluation


def test_eval_wikitext2_joins_test_rows_with_blank_lines(tmp_path, tiny_tokenizer):
    saved = tmp_path / "wikitext2"
    DatasetDict({"train": Dataset.from_dict({"text": TRAIN}),
                 "test": Dataset.from_dict({"text": TEST})}).save_to_disk(str(saved))
    got = eval_tokens("wikitext2", EvalCfg(name="wikitext2", path=str(saved), seq_len=8),
                      tiny_tokenizer)
    assert torch.equal(got, ids(tiny_tokenizer, "\n\n".join(TEST)))


def test_eval_ptb_joins_sentences_with_spaces(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "ptb-test.jsonl", TEST, key="sentence")
    got = eval_tokens("ptb", EvalCfg(name="ptb", path=path, seq_len=8), tiny_tokenizer)
    assert torch.equal(got, ids(tiny_tokenizer, " ".join(TEST)))


def test_eval_c4_takes_first_1100_rows_and_256_windows(tmp_path, tiny_tokenizer):
    texts = [text_of(2, i) for i in range(1200)]
    path = str(tmp_path / "c4-validation.00000-of-00008.json.gz")  # the c4 shard layout
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps({"text": t, "url": "u"}) + "\n" for t in texts)
    first_1100 = ids(tiny_tokenizer, " ".join(texts[:1100]))
    assert first_1100.shape[1] < 256 * 64
    untruncated = eval_tokens("c4", EvalCfg(name="c4", path=path, seq_len=64), tiny_tokenizer)
    assert torch.equal(untruncated, first_1100)
    assert first_1100.shape[1] > 256 * 4
    truncated = eval_tokens("c4", EvalCfg(name="c4", path=path, seq_len=4), tiny_tokenizer)
    assert torch.equal(truncated, first_1100[:, :256 * 4])


def test_eval_paths_per_dataset_dict_and_directory_layout(tmp_path, tiny_tokenizer):
    wiki = write_jsonl(tmp_path / "w.jsonl", TEST)
    ptb = write_jsonl(tmp_path / "p.jsonl", TRAIN, key="sentence")
    cfg = EvalCfg(name=["wikitext2", "ptb"], path={"wikitext2": wiki, "ptb": ptb}, seq_len=8)
    assert torch.equal(eval_tokens("ptb", cfg, tiny_tokenizer),
                       ids(tiny_tokenizer, " ".join(TRAIN)))
    # llmc's layout: one directory with a sub-directory per dataset
    root = tmp_path / "eval-root"
    Dataset.from_dict({"text": TEST}).save_to_disk(str(root / "wikitext2"))
    Dataset.from_dict({"sentence": TRAIN}).save_to_disk(str(root / "ptb"))
    cfg = EvalCfg(name=["wikitext2", "ptb"], path=str(root), seq_len=8)
    assert torch.equal(eval_tokens("wikitext2", cfg, tiny_tokenizer),
                       ids(tiny_tokenizer, "\n\n".join(TEST)))


def test_eval_stream_shorter_than_one_window_raises(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "tiny.jsonl", ["alpha beta"])
    with pytest.raises(LlmcError, match="eval.seq_len=2048"):
        eval_tokens("wikitext2", EvalCfg(name="wikitext2", path=path), tiny_tokenizer)


def test_eval_on_calibration_only_dataset_raises(tiny_tokenizer):
    with pytest.raises(LlmcError, match="pileval"):
        eval_tokens("pileval", EvalCfg(name="pileval", path="/x"), tiny_tokenizer)


def test_long_stream_warning_is_silenced(tmp_path, tiny_tokenizer, monkeypatch):
    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    messages, handler = [], Collect()
    logging.getLogger("transformers").addHandler(handler)
    try:
        monkeypatch.setattr(tiny_tokenizer, "model_max_length", 16)
        monkeypatch.setattr(tiny_tokenizer, "deprecation_warnings", {})
        path = write_jsonl(tmp_path / "w.jsonl", TEST)
        eval_tokens("wikitext2", EvalCfg(name="wikitext2", path=path, seq_len=8), tiny_tokenizer)
        assert not any("sequence length is longer" in m for m in messages)
        tiny_tokenizer("\n\n".join(TEST))  # control: this test does see the warning
        assert any("sequence length is longer" in m for m in messages)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
