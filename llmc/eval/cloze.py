"""A LAMBADA-style cloze accuracy on the built-in corpus's evaluation split, with no network: a
sanity signal beside perplexity (does the pruned model still finish a paragraph?), not a
published benchmark.

For each held-out paragraph of at least MIN_WORDS words the target is its last whitespace-delimited
word without trailing punctuation, the context everything before it. The model is right when
greedy decoding after the context reproduces the target's tokens exactly: with the context and
the target fed at once, when the arg-max of the logits at each target position is the next target
token (the same thing: greedy decoding stops being right at the first position where it is not).
The paragraphs are a fixed, seeded sample, the same in every run; also reported is the target
tokens' perplexity.
"""
import math
import random
import unicodedata
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..distributed import World
from .perplexity import last_block_outputs

MIN_WORDS = 20
SEED = 0  # the sample of paragraphs: the same in every run, so that runs compare


@dataclass(frozen=True)
class ClozeItem:
    context: Tuple[int, ...]  # token ids, left-truncated to fit the window
    target: Tuple[int, ...]


def cloze_split(paragraph: str) -> Optional[Tuple[str, str]]:
    """(context, target word) of `paragraph`; None when it has fewer than MIN_WORDS words or its
    last word is only punctuation."""
    words = paragraph.split()
    if len(words) < MIN_WORDS:
        return None
    last = words[-1]
    target = last
    while target and unicodedata.category(target[-1]).startswith("P"):
        target = target[:-1]
    if not any(c.isalnum() for c in target):
        return None
    context = paragraph.rstrip()[: -len(last)].rstrip()
    return context, target


def cloze_items(paragraphs: Sequence[str], tokenizer, count: int, max_tokens: int,
                seed: int = SEED) -> List[ClozeItem]:
    """`count` items from a seeded sample of the eligible `paragraphs` (all when fewer), in corpus
    order. The target is tokenized as the word after a space (as it follows the context); the
    context keeps its last tokens so that context + target fit `max_tokens`."""
    eligible = [split for split in map(cloze_split, paragraphs) if split is not None]
    chosen = sorted(random.Random(seed).sample(range(len(eligible)), min(count, len(eligible))))
    items = []
    for index in chosen:
        context, word = eligible[index]
        context_ids = tokenizer(context).input_ids
        target_ids = tokenizer(" " + word, add_special_tokens=False).input_ids
        if not target_ids or len(target_ids) >= max_tokens:
            continue
        keep = max_tokens - len(target_ids)
        items.append(ClozeItem(tuple(context_ids[-keep:]), tuple(target_ids)))
    return items


def packed_batches(items: Sequence[ClozeItem], max_batch_tokens: int, pad_id: int):
    """[(item indices, token ids (n, L))]: items sorted by length and packed so that a batch's
    n × L stays within `max_batch_tokens` (one item at least), right-padded with `pad_id`. The
    model is causal, so padding after an item changes none of its logits."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].context) + len(items[i].target))
    batches, current = [], []
    for index in order:
        length = len(items[index].context) + len(items[index].target)
        if current and length * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(index)  # sorted: this item is the longest of its batch
    if current:
        batches.append(current)
    packed = []
    for indices in batches:
        rows = [items[i].context + items[i].target for i in indices]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for row, tokens in enumerate(rows):
            ids[row, :len(tokens)] = torch.tensor(tokens)
        packed.append((indices, ids))
    return packed


def score_item(item: ClozeItem, logits: torch.Tensor) -> Tuple[bool, float]:
    """(greedy decoding reproduces the target, the target tokens' summed NLL) from `logits`
    (len(target), vocab): the logits at the positions that predict each target token."""
    target = torch.tensor(item.target)
    logits = logits.float()
    correct = bool((logits.argmax(dim=-1) == target).all())
    nll = F.cross_entropy(logits, target, reduction="sum").item()
    return correct, nll


def summarise(correct: int, nll: float, paragraphs: int, target_tokens: int) -> dict:
    """acc (with the standard error of a mean, as lm-eval reports it), the target tokens' ppl."""
    acc = correct / paragraphs
    stderr = math.sqrt(acc * (1 - acc) / (paragraphs - 1)) if paragraphs > 1 else 0.0
    return {"acc": acc, "acc_stderr": stderr, "ppl": math.exp(nll / target_tokens),
            "paragraphs": paragraphs}


@torch.no_grad()
def cloze_accuracy(handle, items: Sequence[ClozeItem], device, max_batch_tokens: int,
                   pad_id: int, world=World()) -> dict:
    """{acc, acc_stderr, ppl, paragraphs} of `handle`'s model on `items`, block by block (a
    streamed model as one in memory); only the positions that predict a target token go
    through the final norm and head. Under torchrun each rank scores its share of the batches
    and the counts are summed."""
    batches = world.share(packed_batches(items, max_batch_tokens, pad_id))
    outputs = last_block_outputs(handle, [ids for _, ids in batches], device, "cloze")
    correct, nll = 0, 0.0
    with handle.post_blocks_on(device) as final:
        for (indices, _), hidden in zip(batches, outputs):
            for row, index in enumerate(indices):
                item = items[index]
                start = len(item.context) - 1  # the position that predicts the first target token
                out = hidden[row, start:start + len(item.target)].to(device)
                right, item_nll = score_item(item, handle.head_logits(final, out).cpu())
                correct, nll = correct + right, nll + item_nll
    if world.distributed:
        totals = world.sum(torch.tensor([correct, nll], dtype=torch.float64, device=device))
        correct, nll = int(totals[0].item()), totals[1].item()
    return summarise(correct, nll, len(items), sum(len(item.target) for item in items))
