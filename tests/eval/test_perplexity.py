"""Perplexity equals a plain Hugging Face computation; streamed equals whole-model."""
import math

import pytest
import torch

from conftest import CPU, tiny_model
from llmc.eval.perplexity import eval_windows, perplexity
from llmc.models import ModelHandle
from llmc.registry import MODELS



def _plain_hf_ppl(model, tokens, seq_len):
    windows = tokens.numel() // seq_len
    losses = []
    with torch.no_grad():
        for i in range(windows):
            ids = tokens[:, i * seq_len:(i + 1) * seq_len]
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    return math.exp(sum(losses) / len(losses))


@pytest.mark.parametrize("arch,adapter", [("llama", "Llama"), ("qwen2", "Qwen2")])
def test_ppl_matches_plain_hf_and_streaming(arch, adapter):
    model = tiny_model(arch)
    tokens = torch.randint(0, 300, (1, 16 * 7 + 5), generator=torch.Generator().manual_seed(0))
    expected = _plain_hf_ppl(model, tokens, 16)
    handle = ModelHandle(model, MODELS[adapter])
    whole, speed = perplexity(handle, tokens, 16, CPU)
    streamed, _ = perplexity(handle, tokens, 16, CPU, per_block=True)
    batched, _ = perplexity(handle, tokens, 16, CPU, bs=3)
    # HF's loss routine and a batch of 3 (other matmul shapes, so other BLAS kernels) round
    # differently in fp32: logits agree to ~1e-6 relative, and since ppl = exp(mean loss), the
    # ppl's relative error is the mean loss's absolute error, ~1e-6 here. 1e-4 leaves margin
    # on any CPU; a real mistake (a shifted label, a lost window, a wrong mask) moves it by %.
    assert whole == pytest.approx(expected, rel=1e-4)
    assert batched == pytest.approx(whole, rel=1e-4)
    # The same kernels on the same windows (blocks replayed with the captured arguments, then
    # the final norm and head): equal up to the last reduction.
    assert streamed == pytest.approx(whole, rel=1e-6)
    assert speed > 0


def test_windows_drop_the_tail_and_honour_max_windows():
    tokens = torch.arange(50).reshape(1, 50)
    assert eval_windows(tokens, 16).tolist() == [list(range(i * 16, i * 16 + 16)) for i in range(3)]
    assert eval_windows(tokens, 16, max_windows=2).shape == (2, 16)


def test_ppl_of_max_windows_is_ppl_of_prefix():
    model = tiny_model("llama")
    tokens = torch.randint(0, 300, (1, 100), generator=torch.Generator().manual_seed(1))
    handle = ModelHandle(model, MODELS["Llama"])
    limited, _ = perplexity(handle, tokens, 20, CPU, max_windows=2)
    prefix, _ = perplexity(handle, tokens[:, :40], 20, CPU)
    assert limited == pytest.approx(prefix, rel=1e-6)
