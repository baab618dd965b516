"""Calibration given to llmc.prune: texts, a datasets.Dataset and the token-id windows they make
prune to the same weights (and texts == a local file: tests/api/test_prune.py); bad shapes and
types are one clear error."""
import pytest
import torch
from datasets import Dataset

import llmc
from conftest import random_text, tiny_model
from llmc.api.calibration import calibration_batches
from llmc.config.given import prune_config
from llmc.errors import LlmcError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [random_text(200, seed) for seed in range(3)]
CONFIG = {"sparse": {"method": "SparseGPT", "blocksize": 16},
          "calib": {"n_samples": 5, "seq_len": 24, "preproc": "wikitext2_gptq", "seed": 3}}


def pruned_weights(tokenizer, calibration):
    model = tiny_model("llama", seed=2)
    llmc.prune(model, tokenizer, CONFIG, calibration=calibration)
    return model.state_dict()


def test_texts_a_dataset_and_their_token_ids_prune_alike(tiny_tokenizer):
    cfg, _ = prune_config(CONFIG, calibration_given=True)
    batches, source = calibration_batches(TEXTS, cfg.calib, tiny_tokenizer)
    assert source == "3 given texts" and len(batches) == 5
    assert all(b.shape == (1, 24) for b in batches)
    ids = torch.cat(batches)

    reference = pruned_weights(tiny_tokenizer, TEXTS)
    for calibration in (Dataset.from_dict({"text": TEXTS, "other": [1, 2, 3]}), ids,
                        [window[0] for window in batches]):
        weights = pruned_weights(tiny_tokenizer, calibration)
        for name, tensor in reference.items():
            assert torch.equal(weights[name], tensor), name
    # token ids need no tokenizer
    weights = pruned_weights(None, ids)
    assert all(torch.equal(weights[n], t) for n, t in reference.items())


def test_token_ids_are_the_windows_in_batches_of_calib_bs(tiny_tokenizer):
    cfg, _ = prune_config({**CONFIG, "calib": {**CONFIG["calib"], "bs": 2}},
                          calibration_given=True)
    ids = torch.arange(5 * 8).reshape(5, 8)
    batches, _ = calibration_batches(ids, cfg.calib, None)
    assert [tuple(b.shape) for b in batches] == [(2, 8), (2, 8), (1, 8)]
    assert torch.equal(torch.cat(batches), ids)


@pytest.mark.parametrize("calibration, message", [
    ("one long text", "one string"),
    ([], "an empty list"),
    (torch.zeros(4), "2-D tensor"),
    (torch.zeros(2, 8), "token ids are integers"),
    (torch.full((2, 8), -1), "negative token id"),
    (Dataset.from_dict({"content": ["a b c"]}), "no text column 'text'"),
    ([1, 2, 3], "must be a list of texts"),
])
def test_bad_calibration_is_one_clear_error(calibration, message, tiny_tokenizer):
    cfg, _ = prune_config(CONFIG, calibration_given=True)
    with pytest.raises(LlmcError, match=message):
        calibration_batches(calibration, cfg.calib, tiny_tokenizer)


def test_texts_without_a_tokenizer_and_ids_beyond_the_vocabulary_are_refused(tiny_tokenizer):
    with pytest.raises(LlmcError, match="no tokenizer was given"):
        llmc.prune(tiny_model("llama"), None, CONFIG, calibration=TEXTS)
    with pytest.raises(LlmcError, match="gives token id 999 on the calibration text"):
        llmc.prune(tiny_model("llama"), tiny_tokenizer, CONFIG,
                   calibration=torch.full((1, 8), 999))
    with pytest.raises(LlmcError, match="Magnitude uses no calibration data"):
        llmc.prune(tiny_model("llama"), tiny_tokenizer, {"sparse": {"method": "Magnitude"}},
                   calibration=TEXTS)
