"""Perplexity as the reference repos compute it: the token stream cut into nsamples = N // seq_len
windows, ppl = exp(sum of window losses * seq_len / (nsamples * seq_len)).

`inference_per_block: False` moves the whole model to the device; `True` streams one block at
a time through it (for models larger than the device), with identical results.

Under torchrun (`world`) each rank evaluates its share of the batches and the NLL sums are
all-reduced (in float64): the same perplexity up to the order of the float summation.
"""
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..distributed import World
from ..runner.blockwise import forward_all_blocks
from ..runner.capture import capture_block_inputs


def eval_windows(tokens: torch.Tensor, seq_len: int, max_windows=None) -> torch.Tensor:
    count = tokens.numel() // seq_len
    if max_windows is not None:
        count = min(count, max_windows)
    return tokens.reshape(-1)[: count * seq_len].reshape(count, seq_len)


def window_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of a batch times its token count (seq_len per window)."""
    shift_logits = logits[:, :-1, :].float()
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), ids[:, 1:].reshape(-1))
    return loss * ids.shape[1] * ids.shape[0]


@torch.no_grad()
def perplexity(handle, tokens, seq_len, device, bs=1, max_windows=None, per_block=False,
               desc="ppl", world=World()):
    """(ppl, tokens per second) of `handle`'s model on the token stream `tokens` (1, N)."""
    windows = eval_windows(tokens, seq_len, max_windows)
    batches = world.share([windows[i:i + bs] for i in range(0, len(windows), bs)])
    start = time.perf_counter()
    if per_block:
        nlls = _streamed_nlls(handle, batches, device, desc)
    else:
        with handle.whole_on(device) as model:
            nlls = [window_nll(model(input_ids=ids.to(device), use_cache=False).logits,
                               ids.to(device))
                    for ids in tqdm(batches, desc=desc)]
    if world.distributed:
        total = torch.stack(nlls).sum().double() if nlls else torch.zeros((), dtype=torch.float64)
        total = world.sum(total.reshape(1).to(device)).cpu()[0]
    else:
        total = torch.stack(nlls).sum()
    seconds = time.perf_counter() - start
    ppl = torch.exp(total / (len(windows) * seq_len)).item()
    return ppl, windows.numel() / seconds


def _streamed_nlls(handle, batches, device, desc):
    outputs = last_block_outputs(handle, batches, device, desc)  # before the head is brought
    nlls = []
    with handle.post_blocks_on(device) as final:
        for hidden, ids in zip(outputs, batches):
            nlls.append(window_nll(handle.head_logits(final, hidden.to(device)), ids.to(device)))
    return nlls


def last_block_outputs(handle, batches, device, desc) -> list:
    """Each batch of token ids through the embeddings and every block, one block on the device
    at a time: the last block's outputs per batch (kept on the CPU)."""
    inputs = capture_block_inputs(handle, batches, device, home=torch.device("cpu"))
    forward_all_blocks(handle, inputs, device, desc=f"{desc}: forward per block")
    return inputs.hidden
