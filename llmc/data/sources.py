"""Where dataset rows come from: the Hugging Face hub, a local copy, or the built-in corpus.

Each dataset llmc knows is a `DatasetSpec` in the DATASETS registry. A spec says which column
holds the text and how to get its calibration rows and its evaluation rows. Rows are always a
`datasets.Dataset` in the order of their source, because the samplers index rows by position.

`datasets` is imported inside functions so that `import llmc.data` (which fills the registries
that config validation reads) stays light.
"""
from dataclasses import dataclass, field
from typing import Optional

from loguru import logger

from ..errors import LlmcError
from ..registry import DATASETS
from .builtin_corpus import builtin_split
from .local_files import LOCAL_FORMATS, load_local
from .text_column import check_text_column

# Which split of a local DatasetDict each role reads, in order of preference (the references
# calibrate on 'train' and evaluate on 'test', c4 on 'validation').
CALIB_SPLITS = ("train",)
EVAL_SPLITS = ("test", "validation")


@dataclass(frozen=True)
class HubSplit:
    """The arguments of one `datasets.load_dataset` call that returns one split."""
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    key: str = "text"  # the column holding the text
    needs_path: bool = True  # False only for the built-in corpus, which needs no path
    supports_eval: bool = True
    hub_calib: Optional[HubSplit] = None
    hub_eval: Optional[HubSplit] = None
    # How the evaluation stream is made, as in the reference eval code: the first
    # `eval_max_rows` rows joined with `eval_join`, cut to `eval_max_windows` * seq_len tokens.
    eval_join: str = "\n\n"
    eval_max_rows: Optional[int] = None
    eval_max_windows: Optional[int] = None

    def calib_rows(self, download: bool, path: Optional[str]):
        """Calibration rows: the hub train split, a local copy, or the built-in calib part."""
        return self._rows("calib", download, path)

    def eval_rows(self, download: bool, path: Optional[str]):
        """Evaluation rows: the hub test/validation split, a local copy, or the built-in
        eval part."""
        if not self.supports_eval:
            evaluable = sorted(n for n, s in DATASETS.items() if s.supports_eval)
            raise LlmcError(f"dataset '{self.name}' has no evaluation split; evaluate on one of "
                            f"{', '.join(evaluable)}")
        return self._rows("eval", download, path)

    def _rows(self, role: str, download: bool, path: Optional[str]):
        if not self.needs_path:
            return builtin_split(role)
        if download:
            rows = load_hub(self.hub_calib if role == "calib" else self.hub_eval, self.name, role)
            return check_text_column(rows, self.key, f"the hub copy of '{self.name}'")
        if not path:
            raise LlmcError(f"{role}.path is not set for dataset '{self.name}'; point it at a "
                            f"local copy (or set {role}.download: True)")
        try:
            return load_local(path, self.key, CALIB_SPLITS if role == "calib" else EVAL_SPLITS)
        except LlmcError as err:  # say which setting points at the bad data
            raise LlmcError(f"{role}.path: {err}") from err


def _register(spec: DatasetSpec) -> None:
    DATASETS.register(spec.name)(spec)


_register(DatasetSpec(
    "pileval", supports_eval=False,
    hub_calib=HubSplit(("mit-han-lab/pile-val-backup",), {"split": "validation"})))
_register(DatasetSpec(
    "c4",
    hub_calib=HubSplit(("allenai/c4",), {
        "data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}, "split": "train"}),
    hub_eval=HubSplit(("allenai/c4",), {
        "data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"},
        "split": "validation"}),
    eval_join=" ", eval_max_rows=1100, eval_max_windows=256))
_register(DatasetSpec(
    "wikitext2",
    hub_calib=HubSplit(("wikitext", "wikitext-2-raw-v1"), {"split": "train"}),
    hub_eval=HubSplit(("wikitext", "wikitext-2-raw-v1"), {"split": "test"})))
_register(DatasetSpec(
    "ptb", key="sentence",
    hub_calib=HubSplit(("ptb_text_only", "penn_treebank"), {"split": "train"}),
    hub_eval=HubSplit(("ptb_text_only", "penn_treebank"), {"split": "test"}),
    eval_join=" "))
_register(DatasetSpec("builtin", needs_path=False))


# ---------------------------------------------------------------- hub


def load_hub(split: Optional[HubSplit], name: str, role: str):
    """One split from the Hugging Face hub; any failure becomes an LlmcError that names the fix."""
    if split is None:
        raise LlmcError(f"dataset '{name}' has no {role} split on the hub")
    from datasets import load_dataset

    logger.info(f"downloading '{name}' ({role}) from the Hugging Face hub: "
                f"load_dataset{(*split.args,)} {split.kwargs}")
    try:
        return load_dataset(*split.args, **split.kwargs)
    except Exception as err:  # network, auth, hub layout changes: all are fixed the same way
        raise LlmcError(
            f"could not download '{name}' ({role}) from the Hugging Face hub "
            f"({type(err).__name__}: {str(err)[:300]}); {role}.download: True needs network "
            f"access to the hub. Put a local copy on disk instead (a save_to_disk directory or "
            f"a {', '.join(LOCAL_FORMATS)} file), set {role}.path to it and "
            f"{role}.download: False") from err
