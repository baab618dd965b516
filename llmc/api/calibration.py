"""The calibration data a caller gives llmc.prune, as the batches of token windows the engine
takes. Texts and a datasets.Dataset are rows, as a local dataset file's are: the config's
calib.preproc draws calib.n_samples windows of calib.seq_len tokens from them with calib.seed
(so texts == the same texts in a .jsonl file given as calib.path). Token ids are the windows
themselves, used as given: one (1, T) window per row of a 2-D tensor, or per tensor of a list.
None: the config's calib section, as the CLI reads it."""
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import torch

from ..data import batch_windows, batches_from_rows, calib_batches
from ..data.text_column import check_text_column
from ..errors import LlmcError

if TYPE_CHECKING:
    import datasets

TEXT_COLUMN = "text"  # where a given Dataset holds its text
Calibration = Union[None, Sequence[str], "datasets.Dataset", torch.Tensor,
                    Sequence[torch.Tensor]]


def calibration_batches(calibration: Calibration, calib_cfg, tokenizer) -> Tuple[List, str]:
    """(batches, what they came from, for the record)."""
    if calibration is None:
        _need_tokenizer(tokenizer, "the config's calib section")
        return calib_batches(calib_cfg, tokenizer), f"calib.name '{calib_cfg.name}'"
    windows = _token_windows(calibration)
    if windows is not None:
        return batch_windows(windows, calib_cfg.bs), f"{len(windows)} token-id windows"
    rows = _rows(calibration)
    _need_tokenizer(tokenizer, "calibration texts")
    source = f"{len(rows)} given texts"
    return batches_from_rows(calib_cfg, tokenizer, rows, TEXT_COLUMN, source), source


def _need_tokenizer(tokenizer, what: str) -> None:
    if tokenizer is None:
        raise LlmcError(f"{what} must be tokenized, and no tokenizer was given: pass the model's "
                        "tokenizer to llmc.prune, or calibration as token ids")


def _token_windows(calibration) -> Optional[List[torch.Tensor]]:
    """The (1, T) windows of token-id calibration, or None when it is not token ids."""
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() != 2:
            raise LlmcError(f"calibration token ids must be a 2-D tensor (windows, tokens), got "
                            f"shape {tuple(calibration.shape)}")
        tensors = list(calibration.split(1))
    elif (isinstance(calibration, (list, tuple)) and calibration
          and all(isinstance(t, torch.Tensor) for t in calibration)):
        tensors = [t.reshape(1, -1) if t.dim() == 1 else t for t in calibration]
    else:
        return None
    if not tensors:
        raise LlmcError("calibration holds no windows; give at least one")
    for index, window in enumerate(tensors):
        if window.dim() != 2 or window.shape[0] != 1 or window.shape[1] < 1:
            raise LlmcError(f"calibration window {index} has shape {tuple(window.shape)}; each "
                            "window must be 1-D (tokens) or (1, tokens)")
        if window.dtype.is_floating_point or window.dtype.is_complex or window.dtype == torch.bool:
            raise LlmcError(f"calibration window {index} holds {window.dtype} values; token ids "
                            "are integers (torch.long)")
        if int(window.min()) < 0:
            raise LlmcError(f"calibration window {index} holds a negative token id")
    return [window.to("cpu", torch.long) for window in tensors]


def _rows(calibration):
    """Texts as rows of a datasets.Dataset (its column 'text' checked)."""
    from datasets import Dataset

    if isinstance(calibration, Dataset):
        return check_text_column(calibration, TEXT_COLUMN, "the calibration Dataset")
    if isinstance(calibration, (str, bytes)):
        raise LlmcError("calibration is one string; give a list of texts (one per document)")
    if isinstance(calibration, (list, tuple)) and all(isinstance(t, str) for t in calibration):
        if not calibration:
            raise LlmcError("calibration is an empty list; give at least one text")
        return check_text_column(Dataset.from_dict({TEXT_COLUMN: list(calibration)}),
                                 TEXT_COLUMN, "the calibration texts")
    raise LlmcError(f"calibration must be a list of texts, a datasets.Dataset with a "
                    f"'{TEXT_COLUMN}' column, token ids (a 2-D tensor or a list of tensors) or "
                    f"None (the config's calib section), got {type(calibration).__name__}")
