"""llmc.prune leaves its caller's process as it found it: the global RNG states, torch's thread
count and grad mode, and the model's training/requires_grad flags and use_cache, after success
and after an error."""
import random

import numpy as np
import pytest
import torch

import llmc
from conftest import random_text, tiny_model
from llmc.errors import LlmcError

CONFIG = {"sparse": {"method": "Wanda"},
          "calib": {"n_samples": 2, "seq_len": 16, "preproc": "wikitext2_gptq"}}
TEXTS = [random_text(200, 0)]


def caller_state(model):
    return {"python": random.getstate(), "numpy": np.random.get_state()[1].tolist(),
            "torch": torch.get_rng_state().tolist(), "threads": torch.get_num_threads(),
            "grad": torch.is_grad_enabled(), "use_cache": model.config.use_cache,
            "training": {n: m.training for n, m in model.named_modules()},
            "trainable": {n: p.requires_grad for n, p in model.named_parameters()}}


def a_training_script_state(model):
    """What a training loop leaves: its own seeds drawn from, train mode, a frozen part."""
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    random.random(), np.random.rand(), torch.rand(3)
    torch.set_num_threads(1)
    torch.set_grad_enabled(True)
    model.train()
    model.config.use_cache = True
    model.get_input_embeddings().weight.requires_grad_(False)
    model.model.decoder.layers[0].eval()


@pytest.mark.parametrize("fails", [False, True], ids=["success", "error"])
def test_the_callers_state_is_restored(fails, tiny_tokenizer):
    model = tiny_model("opt")  # dropout: train mode would change what the run computes
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    try:
        a_training_script_state(model)
        before = caller_state(model)
        if fails:  # fails once the run has seeded and set the model to eval mode
            with pytest.raises(LlmcError, match="gives token id"):
                llmc.prune(model, tiny_tokenizer, CONFIG, calibration=torch.full((1, 8), 10**4))
        else:
            result = llmc.prune(model, tiny_tokenizer, CONFIG, calibration=TEXTS)
            assert result.sparsity["overall"] == pytest.approx(0.5)
        after = caller_state(model)
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
    assert after == before
    assert after["training"][""] and not after["training"]["model.decoder.layers.0"]
    assert not after["trainable"]["model.decoder.embed_tokens.weight"]


def test_train_mode_does_not_change_the_result(tiny_tokenizer):
    """The run computes in eval mode (no dropout), as the CLI does with a loaded model."""
    weights = []
    for train in (False, True):
        model = tiny_model("opt", dropout=0.5)
        model.train(train)
        llmc.prune(model, tiny_tokenizer, CONFIG, calibration=TEXTS)
        assert model.training == train
        weights.append(model.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(weights[1][name], tensor), name
