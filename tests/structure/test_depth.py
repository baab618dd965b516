"""Depth methods: Block Influence and the angular distance on hand-made vectors; against a plain
computation from transformers' own output_hidden_states on a tiny model; which blocks go."""
import math

import pytest
import torch

from llmc.models.handle import ModelHandle
from llmc.config.schema import SparseCfg
from llmc.config.typed import build
from llmc.runner.restructure import restructure_blockwise
from llmc.structure import build_structure
from llmc.structure.depth import angular_distance, block_influence, least

from conftest import CPU, arch_adapter, arch_model, token_batches


def test_block_influence_on_hand_made_vectors():
    hidden_in = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]]])
    hidden_out = torch.tensor([[[0.0, 3.0], [2.0, 2.0], [1.0, 0.0], [-1.0, 0.0]]])
    # orthogonal: 1; parallel: 0; a zero vector: cosine NaN -> 0.5 (the reference's); opposite: 2
    assert block_influence(hidden_in, hidden_out).tolist() == pytest.approx([1.0, 0.0, 0.5, 2.0],
                                                                        abs=1e-6)


def test_angular_distance_on_hand_made_vectors():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    assert angular_distance(a, b).tolist() == pytest.approx([0.5, 0.0, 1.0])


def test_least_takes_the_lower_index_on_ties():
    assert least([3.0, 1.0, 1.0, 0.5, 2.0], 2) == [1, 3]
    assert least([1.0, 1.0, 1.0], 2) == [0, 1]


def _structure(name, **settings):
    raw = {"structure": name, "method": "none", "weight": {"sparsity": 0}, **settings}
    return build_structure(build(SparseCfg, raw, "sparse"))


def _pass(arch, structure, layers=6, windows=3):
    model = arch_model(arch, layers=layers)
    batches = token_batches(windows, 16, seed=3)
    with torch.no_grad():
        hidden = [model(ids, output_hidden_states=True).hidden_states for ids in batches]
    done = restructure_blockwise(ModelHandle(model, arch_adapter(arch)), structure, batches, CPU)
    return model, hidden, done


@pytest.mark.parametrize("arch", ["llama", "gemma3", "opt"])
def test_block_influence_equals_a_plain_computation(arch):
    """Block i's influence is the mean over all tokens of 1 - cos(hidden_states[i],
    hidden_states[i + 1]) of transformers' own output (the last one after the final norm, as
    ShortGPT's reference reads it); the blocks of least influence are removed."""
    structure = _structure("ShortGPT", depth={"remove": 2})
    model, hidden, done = _pass(arch, structure)
    plain = []
    for i in range(6):
        values = torch.cat([(1 - torch.nn.functional.cosine_similarity(
            h[i].double(), h[i + 1].double(), dim=-1)).flatten() for h in hidden])
        plain.append(values.mean().item())
    measured = structure.record()["block_influence"]
    assert measured == pytest.approx(plain, rel=1e-4, abs=1e-6)
    assert done["blocks_removed"] == sorted(sorted(range(6), key=lambda i: plain[i])[:2])
    assert model.config.num_hidden_layers == 4


@pytest.mark.parametrize("tokens", ["last", "all"])
def test_angular_distance_equals_a_plain_computation(tokens):
    """The distance of start l is arccos(cos(h_l, h_l+n)) / pi between the inputs of blocks l
    and l + n, averaged over the windows' last tokens (or all tokens); l + n stays below the
    last block, which is kept; the n blocks from the best start are removed."""
    n = 2
    structure = _structure("Contiguous", depth={"remove": n}, angular_tokens=tokens)
    _, hidden, done = _pass("llama", structure)
    plain = []
    for start in range(6 - n):  # the inputs of blocks start and start + n <= 5
        pairs = [(h[start], h[start + n]) for h in hidden]
        if tokens == "last":
            pairs = [(a[:, -1], b[:, -1]) for a, b in pairs]
        cosines = torch.cat([torch.nn.functional.cosine_similarity(
            a.double(), b.double(), dim=-1).flatten() for a, b in pairs])
        plain.append((torch.arccos(cosines.clamp(-1, 1)) / math.pi).mean().item())
    assert structure.record()["angular_distance"] == pytest.approx(plain, rel=1e-4, abs=1e-6)
    best = min(range(len(plain)), key=lambda s: (plain[s], s))
    assert done["blocks_removed"] == [best, best + 1]


def test_remove_as_a_fraction_rounds_the_block_count():
    structure = _structure("ShortGPT", depth={"remove": 0.25})
    _, _, done = _pass("llama", structure, layers=8)
    assert len(done["blocks_removed"]) == 2


@pytest.mark.parametrize("name, remove", [("ShortGPT", 6), ("Contiguous", 6), ("ShortGPT", 2.5)])
def test_an_amount_out_of_range_is_one_error_before_the_pass(name, remove):
    from llmc.errors import ConfigError, LlmcError

    structure = _structure(name, depth={"remove": remove})
    with pytest.raises((LlmcError, ConfigError), match="sparse.depth.remove"):
        structure.start(6)
