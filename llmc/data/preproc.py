"""Calibration samplers: rows of text → token windows, exactly as the reference repos draw them.

Every sampler has the signature
    (dataset, tokenizer, n_samples, seq_len, seed, key) -> list of LongTensor of shape (1, T)
and seeds Python's global `random` with `seed` first, as the references do right before sampling
(GPTQ / SparseGPT / Wanda `data.py`, ModelTC llmc `specified_preproc.py`), so that the same seed
gives the same windows as those repos. Where a reference would crash (too little text) or loop
forever (no long enough document), these raise an LlmcError that names the fix instead, and they
never return fewer than n_samples windows.
"""
import random
from dataclasses import dataclass
from typing import Callable

from ..errors import LlmcError
from ..registry import PREPROCS

SCAN_BATCH = 1000  # documents per tokenizer call when c4_gptq counts the long ones


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: the function, and whether its windows vary in length (then they
    can only be batched one window at a time: calib.bs 1)."""
    sample: Callable
    variable_length: bool = False

    def __call__(self, dataset, tokenizer, n_samples, seq_len, seed, key):
        return self.sample(dataset, tokenizer, n_samples, seq_len, seed, key)


def sampler(name, variable_length=False):
    """Register a sampler function under `name` (calib.preproc)."""
    def add(sample):
        PREPROCS.register(name)(Sampler(sample, variable_length))
        return sample
    return add


def encode(tokenizer, text, **kwargs):
    """input_ids of shape (1, T). verbose=False: a whole corpus in one string is longer than the
    model's maximum length on purpose, so transformers' warning about it is only noise here."""
    return tokenizer(text, return_tensors="pt", verbose=False, **kwargs).input_ids


def random_windows(enc, n_samples, seq_len, what):
    """n_samples windows of seq_len tokens from the stream `enc` (1, T), starts drawn with
    random.randint(0, T - seq_len - 1) as the references do (so T must exceed seq_len).

    The windows may overlap, as the references' do, but the stream must hold n_samples *
    seq_len tokens: with fewer, windows would repeat text of necessity, and the calibration
    would see less distinct text than calib.n_samples asks for."""
    total = enc.shape[1]
    if total <= seq_len or total < n_samples * seq_len:
        raise LlmcError(f"{what} is only {total} tokens long: "
                        + _too_short_fix(total, n_samples, seq_len))
    windows = []
    for _ in range(n_samples):
        start = random.randint(0, total - seq_len - 1)
        windows.append(enc[:, start:start + seq_len])
    return windows


def _too_short_fix(total, n_samples, seq_len):
    """What a stream of `total` tokens can give instead, and the settings that would fit."""
    most = total // seq_len if total > seq_len else 0  # windows the stream holds
    longest = total - 1 if n_samples == 1 else total // n_samples  # seq_len that would fit
    fixes = []
    if most:
        fixes.append(f"lower calib.n_samples to at most {most}")
    if longest >= 1:
        fixes.append(f"lower calib.seq_len to at most {longest}")
    fixes.append("calibrate on more text")
    why = ""
    if total > seq_len:  # long enough for one window, too short for n_samples
        why = (" (windows are drawn at random and may overlap, but from a shorter stream they "
               "would repeat its text of necessity)")
    return (f"room for {most} windows of calib.seq_len={seq_len} tokens, but calib.n_samples="
            f"{n_samples} needs {max(n_samples * seq_len, seq_len + 1)} tokens{why}; "
            f"{', or '.join(fixes)}")


def _windows_of_joined_rows(separator):
    """A sampler: all rows joined with `separator` into one stream, then seeded random windows."""

    def sample(dataset, tokenizer, n_samples, seq_len, seed, key):
        random.seed(seed)
        enc = encode(tokenizer, separator.join(dataset[key]))
        return random_windows(enc, n_samples, seq_len,
                              f"the calibration text joined with {separator!r}")

    return sample


# SparseGPT / Wanda join the wikitext2 train split (and ptb's 'sentence' column, its key) with a
# single space; the built-in corpus is joined with blank lines, as paragraphs.
wikitext2_gptq = sampler("wikitext2_gptq")(_windows_of_joined_rows(" "))
ptb_gptq = sampler("ptb_gptq")(_windows_of_joined_rows(" "))
random_window = sampler("random_window")(_windows_of_joined_rows("\n\n"))


@sampler("c4_gptq")
def c4_gptq(dataset, tokenizer, n_samples, seq_len, seed, key):
    """Per window: draw documents until one is longer than seq_len tokens (strictly, as
    SparseGPT / Wanda), then a random window inside it."""
    random.seed(seed)
    _require_long_documents(dataset, tokenizer, n_samples, seq_len, key)
    windows = []
    for _ in range(n_samples):
        while True:
            index = random.randint(0, len(dataset) - 1)
            enc = encode(tokenizer, dataset[index][key])
            if enc.shape[1] > seq_len:
                break
        start = random.randint(0, enc.shape[1] - seq_len - 1)
        windows.append(enc[:, start:start + seq_len])
    return windows


def _require_long_documents(dataset, tokenizer, n_samples, seq_len, key):
    """That at least n_samples documents are longer than seq_len tokens: with none, the
    reference's draw loop never ends; with fewer, its windows repeat documents of necessity.

    The rows are scanned in file order, in batches, only until n_samples long ones are found
    (about as many documents as the draws themselves tokenize), and `random` is not touched,
    so the windows stay the reference's."""
    need = (f"c4_gptq needs at least calib.n_samples={n_samples} documents longer than "
            f"calib.seq_len={seq_len} tokens (it cuts one window from each document it draws; "
            f"from fewer, windows would repeat documents of necessity)")
    if len(dataset) < n_samples:
        raise LlmcError(f"{need}, but the calibration data has only {len(dataset)} rows; lower "
                        f"calib.n_samples to at most {len(dataset)}, or add documents")
    found, longest = 0, 0
    for begin in range(0, len(dataset), SCAN_BATCH):
        texts = dataset[begin:begin + SCAN_BATCH][key]
        lengths = [len(ids) for ids in tokenizer(texts, verbose=False).input_ids]
        found += sum(length > seq_len for length in lengths)
        longest = max([longest, *lengths])
        if found >= n_samples:
            return
    fixes = [f"lower calib.n_samples to at most {found}"] if found else []
    fixes += ["lower calib.seq_len", "add long documents",
              "use a preproc that joins documents (e.g. wikitext2_gptq)"]
    raise LlmcError(f"{need}, but only {found} of the {len(dataset)} calibration documents are "
                    f"(the longest has {longest} tokens); {', or '.join(fixes)}")


def _first_rows_of_shuffle(dataset, tokenizer, n_samples, seq_len, key, min_len, name):
    """ModelTC llmc's walk: rows of shuffle(seed=42) tokenized and truncated to seq_len, kept
    when at least `min_len` tokens long, until n_samples are kept."""
    # llmc hard-codes 42 here (not calib.seed). keep_in_memory gives the same permutation but
    # writes no indices file next to the user's dataset.
    shuffled = dataset.shuffle(seed=42, keep_in_memory=True)
    windows = []
    for row in shuffled:
        enc = encode(tokenizer, row[key], max_length=seq_len, truncation=True)
        if enc.shape[1] < min_len:
            continue
        windows.append(enc)
        if len(windows) == n_samples:
            return windows
    raise LlmcError(f"preproc '{name}' made only {len(windows)} of calib.n_samples={n_samples} "
                    f"windows from {len(dataset)} rows (rows shorter than {min_len} tokens are "
                    f"skipped); lower calib.n_samples"
                    + (" or calib.seq_len" if min_len > 1 else "") + ", or add rows")


@sampler("pileval_smooth", variable_length=True)
def pileval_smooth(dataset, tokenizer, n_samples, seq_len, seed, key):
    """The first n_samples rows of shuffle(seed=42), each truncated to seq_len tokens; windows
    have different lengths. One deviation from ModelTC llmc: a row that encodes to no tokens
    at all (an empty row, with a tokenizer that adds no BOS) is skipped, since a 0-token window
    cannot go through a model."""
    random.seed(seed)
    return _first_rows_of_shuffle(dataset, tokenizer, n_samples, seq_len, key, 1,
                                  "pileval_smooth")


@sampler("txt_general_preproc")
def txt_general_preproc(dataset, tokenizer, n_samples, seq_len, seed, key):
    """Rows of shuffle(seed=42) that have at least seq_len tokens, truncated to seq_len."""
    random.seed(seed)
    return _first_rows_of_shuffle(dataset, tokenizer, n_samples, seq_len, key, seq_len,
                                  "txt_general_preproc")
