"""Each sampler against a plain re-computation of its reference (GPTQ / SparseGPT / Wanda
data.py, ModelTC llmc specified_preproc.py) on the same rows and seed, plus its guards."""
import random

import pytest
import torch
from datasets import Dataset

from llmc.data import preproc
from llmc.errors import LlmcError
from llmc.registry import PREPROCS

WORDS = ("river city music film war king model data light water north south year born "
         "the of and to in is was for on as with by at from").split()


def text_of(n_words, seed):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


def rows(texts, key="text"):
    return Dataset.from_dict({key: texts})


def reference_stream_windows(text, tokenizer, n_samples, seq_len, seed):
    """SparseGPT / Wanda get_wikitext2 (and GPTQ get_ptb_new), minus the dataset loading."""
    trainenc = tokenizer(text, return_tensors="pt")
    random.seed(seed)
    trainloader = []
    for _ in range(n_samples):
        i = random.randint(0, trainenc.input_ids.shape[1] - seq_len - 1)
        j = i + seq_len
        trainloader.append(trainenc.input_ids[:, i:j])
    return trainloader


def reference_c4(traindata, tokenizer, n_samples, seq_len, seed):
    """SparseGPT / Wanda get_c4's calibration part."""
    random.seed(seed)
    trainloader = []
    for _ in range(n_samples):
        while True:
            i = random.randint(0, len(traindata) - 1)
            trainenc = tokenizer(traindata[i]["text"], return_tensors="pt")
            if trainenc.input_ids.shape[1] > seq_len:
                break
        i = random.randint(0, trainenc.input_ids.shape[1] - seq_len - 1)
        j = i + seq_len
        trainloader.append(trainenc.input_ids[:, i:j])
    return trainloader


def reference_llmc_shuffle(calib_dataset, tokenizer, n_samples, seq_len, skip_short):
    """ModelTC llmc pileval_smooth (skip_short False) / txt_general_preproc (True)."""
    dataset = calib_dataset.shuffle(seed=42)
    samples = []
    n_run = 0
    for data in dataset:
        line_encoded = tokenizer(data["text"], return_tensors="pt", max_length=seq_len,
                                 truncation=True).input_ids
        if skip_short and line_encoded.shape[1] < seq_len:
            continue
        samples.append(line_encoded)
        n_run += 1
        if n_run == n_samples:
            break
    return samples


def assert_same_windows(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == torch.long and g.shape == e.shape and torch.equal(g, e)


TEXTS = [text_of(5 + (7 * i) % 40, i) for i in range(60)]


@pytest.mark.parametrize("name, key, joiner", [
    ("wikitext2_gptq", "text", " "),
    ("ptb_gptq", "sentence", " "),
    ("random_window", "text", "\n\n"),
])
def test_stream_samplers_match_reference(tiny_tokenizer, name, key, joiner):
    got = PREPROCS[name](rows(TEXTS, key), tiny_tokenizer, 9, 24, 7, key)
    expected = reference_stream_windows(joiner.join(TEXTS), tiny_tokenizer, 9, 24, 7)
    assert_same_windows(got, expected)
    assert all(w.shape == (1, 24) for w in got)


@pytest.mark.parametrize("name", ["wikitext2_gptq", "ptb_gptq", "random_window", "c4_gptq"])
def test_same_seed_same_windows_other_seed_other_windows(tiny_tokenizer, name):
    data = rows(TEXTS)
    first = PREPROCS[name](data, tiny_tokenizer, 6, 16, 3, "text")
    random.random()  # global state in between must not matter: the sampler seeds itself
    again = PREPROCS[name](data, tiny_tokenizer, 6, 16, 3, "text")
    other = PREPROCS[name](data, tiny_tokenizer, 6, 16, 4, "text")
    assert_same_windows(again, first)
    assert any(not torch.equal(a, b) for a, b in zip(first, other))


def test_c4_matches_reference_and_only_picks_documents_longer_than_seq_len(tiny_tokenizer):
    # Short documents are digits and exactly seq_len tokens long: '>=' (ModelTC llmc) would
    # take them, '>' (SparseGPT / Wanda) never does. Long documents are words only.
    short = "0123456789 9876543210"
    seq_len = tiny_tokenizer(short, return_tensors="pt").input_ids.shape[1]
    texts = [short if i % 3 else text_of(60, i) for i in range(45)]
    data = rows(texts)
    got = preproc.c4_gptq(data, tiny_tokenizer, 12, seq_len, 11, "text")
    assert_same_windows(got, reference_c4(data, tiny_tokenizer, 12, seq_len, 11))
    long_encodings = [tiny_tokenizer(t).input_ids for t in texts if t != short]
    for window in got:
        ids = window[0].tolist()
        assert any(ids == enc[s:s + seq_len] for enc in long_encodings
                   for s in range(len(enc) - seq_len + 1))


def test_c4_rare_long_documents_are_still_found_with_reference_draws(tiny_tokenizer,
                                                                     monkeypatch):
    # As many long documents as windows, among many short ones: the count of long documents
    # (batched, in file order, drawing nothing) leaves exactly the reference's random draws.
    monkeypatch.setattr(preproc, "SCAN_BATCH", 7)
    texts = ["short."] * 80
    for i in (12, 57, 79):
        texts[i] = text_of(50, i)
    data = rows(texts)
    got = preproc.c4_gptq(data, tiny_tokenizer, 3, 16, 0, "text")
    assert_same_windows(got, reference_c4(data, tiny_tokenizer, 3, 16, 0))


def test_c4_with_fewer_long_documents_than_windows_raises_with_the_count(tiny_tokenizer):
    # The reference would cut the 4 windows from 2 documents (or loop for ever with none).
    texts = ["short."] * 30
    texts[3], texts[20] = text_of(50, 3), text_of(50, 20)
    with pytest.raises(LlmcError) as err:
        preproc.c4_gptq(rows(texts), tiny_tokenizer, 4, 16, 0, "text")
    message = str(err.value)
    assert "only 2 of the 30" in message and "calib.n_samples to at most 2" in message
    with pytest.raises(LlmcError, match="only 5 rows"):
        preproc.c4_gptq(rows(texts[:5]), tiny_tokenizer, 6, 16, 0, "text")


def test_c4_without_long_documents_raises_instead_of_looping(tiny_tokenizer):
    texts = [text_of(5, i) for i in range(30)]
    with pytest.raises(LlmcError, match="calib.seq_len=64"):
        preproc.c4_gptq(rows(texts), tiny_tokenizer, 4, 64, 0, "text")


def test_pileval_smooth_is_first_rows_of_shuffle_42_truncated(tiny_tokenizer):
    data = rows(TEXTS)
    got = preproc.pileval_smooth(data, tiny_tokenizer, 10, 60, 123, "text")
    assert_same_windows(got, reference_llmc_shuffle(data, tiny_tokenizer, 10, 60, False))
    lengths = {w.shape[1] for w in got}
    assert max(lengths) == 60 and min(lengths) < 60  # truncated, and no minimum length
    # calib.seed does not move llmc's hard-coded shuffle seed
    assert_same_windows(preproc.pileval_smooth(data, tiny_tokenizer, 10, 60, 5, "text"), got)


def test_pileval_smooth_skips_rows_that_encode_to_nothing(tiny_tokenizer):
    data = rows(["" if i % 2 else t for i, t in enumerate(TEXTS)])
    got = preproc.pileval_smooth(data, tiny_tokenizer, 8, 20, 0, "text")
    assert len(got) == 8 and all(w.shape[1] > 0 for w in got)
    kept = [w for w in reference_llmc_shuffle(data, tiny_tokenizer, 60, 20, False)
            if w.shape[1] > 0]
    assert_same_windows(got, kept[:8])


def test_txt_general_keeps_only_full_length_rows(tiny_tokenizer):
    data = rows(TEXTS)
    got = preproc.txt_general_preproc(data, tiny_tokenizer, 7, 40, 0, "text")
    assert_same_windows(got, reference_llmc_shuffle(data, tiny_tokenizer, 7, 40, True))
    assert all(w.shape == (1, 40) for w in got)


@pytest.mark.parametrize("name, n_samples, seq_len, words", [
    ("wikitext2_gptq", 2, 10_000, "10000"),
    ("random_window", 2, 10_000, "10000"),
    ("pileval_smooth", 61, 16, "61"),
    ("txt_general_preproc", 4, 10_000, "calib.seq_len"),
])
def test_too_few_windows_raise_with_numbers_and_fix(tiny_tokenizer, name, n_samples, seq_len,
                                                    words):
    with pytest.raises(LlmcError) as err:
        PREPROCS[name](rows(TEXTS), tiny_tokenizer, n_samples, seq_len, 0, "text")
    message = str(err.value)
    assert words in message and "lower calib." in message


def test_stream_of_exactly_seq_len_tokens_is_too_short(tiny_tokenizer):
    # The reference draws starts in [0, T - seq_len - 1], so T must exceed seq_len.
    total = tiny_tokenizer(" ".join(TEXTS[:3]), return_tensors="pt").input_ids.shape[1]
    with pytest.raises(LlmcError, match=f"only {total} tokens"):
        preproc.wikitext2_gptq(rows(TEXTS[:3]), tiny_tokenizer, 1, total, 0, "text")
    assert preproc.wikitext2_gptq(rows(TEXTS[:3]), tiny_tokenizer, 1, total - 1, 0,
                                  "text")[0].shape == (1, total - 1)
