"""The cloze metric: targets cut from hand-made paragraphs, scores from hand-made logits, and the
accuracy of a tiny model equal to greedy decoding with Hugging Face's generate()."""
import math

import pytest
import torch

from conftest import CPU, VOCAB, tiny_model
from llmc.eval.cloze import (ClozeItem, cloze_accuracy, cloze_items, cloze_split, packed_batches,
                             score_item)
from llmc.models import ModelHandle
from llmc.registry import MODELS

TWENTY = " ".join(f"w{i}" for i in range(19))  # 19 words of context


def test_the_target_is_the_last_word_without_trailing_punctuation():
    assert cloze_split(f"{TWENTY} river.") == (TWENTY, "river")
    assert cloze_split(f"{TWENTY} the \u201cMississippi\u201d.") == (f"{TWENTY} the",
                                                                   "\u201cMississippi")
    assert cloze_split(f"{TWENTY} (1990)!?") == (TWENTY, "(1990")
    assert cloze_split(f"{TWENTY}\n  end  ") == (TWENTY, "end")


def test_short_paragraphs_and_bare_punctuation_are_left_out():
    assert cloze_split(" ".join(["word"] * 19) + ".") is None  # 19 words
    assert cloze_split(f"{TWENTY} \u2014") is None
    assert cloze_split(f"{TWENTY} ...") is None


def test_items_are_a_seeded_sample_in_corpus_order(tiny_tokenizer):
    paragraphs = [f"{TWENTY} the river {i} city." for i in range(30)] + ["too short."]
    items = cloze_items(paragraphs, tiny_tokenizer, 10, 512, seed=3)
    assert len(items) == 10
    assert items == cloze_items(paragraphs, tiny_tokenizer, 10, 512, seed=3)
    assert items != cloze_items(paragraphs, tiny_tokenizer, 10, 512, seed=4)
    everything = cloze_items(paragraphs, tiny_tokenizer, 100, 512)
    assert len(everything) == 30  # all eligible, the short one left out
    first = everything[0]
    assert first.target == tuple(tiny_tokenizer(" city", add_special_tokens=False).input_ids)
    assert tiny_tokenizer.decode(first.context) == f"{TWENTY} the river 0"
    # a window too short for the context keeps its last tokens
    short = cloze_items(paragraphs[:1], tiny_tokenizer, 1, 8)[0]
    assert len(short.context) + len(short.target) == 8
    assert short.context == first.context[-len(short.context):]


def test_score_of_hand_made_logits():
    item = ClozeItem(context=(1, 2), target=(5, 7))
    logits = torch.zeros(2, 10)
    logits[0, 5] = logits[1, 7] = 2.0
    correct, nll = score_item(item, logits)
    assert correct
    expected = 2 * -math.log(math.exp(2) / (math.exp(2) + 9))
    assert nll == pytest.approx(expected)
    logits[1, 3] = 3.0  # the second target token is no longer the arg-max
    assert not score_item(item, logits)[0]
    assert score_item(item, torch.zeros(2, 10))[1] == pytest.approx(2 * math.log(10))


def test_batches_pack_sorted_items_within_the_token_budget():
    items = [ClozeItem(tuple(range(n)), (9,)) for n in (7, 2, 5, 3)]
    batches = packed_batches(items, 12, pad_id=99)
    assert [indices for indices, _ in batches] == [[1, 3], [2], [0]]
    indices, ids = batches[0]
    assert ids.tolist() == [[0, 1, 9, 99], [0, 1, 2, 9]]
    assert all(ids.numel() <= 12 for _, ids in batches)


def test_accuracy_equals_greedy_decoding_with_generate(one_torch_thread):
    """Items whose targets are the model's own greedy continuation (found by generate()) are
    right, the others (their last token changed) wrong: a known accuracy. Batches of several
    items, right-padded, give the targets' NLL of one plain forward per item."""
    model = tiny_model("llama")
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(8):
        context = torch.randint(3, VOCAB, (1, 5 + 3 * i), generator=gen)
        greedy = model.generate(context, max_new_tokens=2, do_sample=False, min_new_tokens=2,
                                pad_token_id=0, eos_token_id=None)[0, context.shape[1]:].tolist()
        if i % 2:  # wrong: greedy decoding gives another second token
            greedy[1] = (greedy[1] + 1) % VOCAB
        items.append(ClozeItem(tuple(context[0].tolist()), tuple(greedy)))
    handle = ModelHandle(model, MODELS["Llama"])
    result = cloze_accuracy(handle, items, CPU, max_batch_tokens=64, pad_id=0)
    assert result["acc"] == 0.5 and result["paragraphs"] == 8
    nll = 0.0
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([item.context + item.target])
            logits = model(input_ids=ids).logits[0, len(item.context) - 1:-1]
            nll += torch.nn.functional.cross_entropy(logits, ids[0, len(item.context):],
                                                     reduction="sum").item()
    assert result["ppl"] == pytest.approx(math.exp(nll / 16), rel=1e-4)
    one_by_one = cloze_accuracy(handle, items, CPU, max_batch_tokens=1, pad_id=0)
    assert one_by_one["acc"] == 0.5
    assert one_by_one["ppl"] == pytest.approx(result["ppl"], rel=1e-4)
