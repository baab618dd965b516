"""RIA's score and masks against hand-checked values and the paper's formula; its channel
permutation against hand-checked orders and brute force."""
import itertools

import pytest
import torch

from llmc.config import sparse_config
from llmc.registry import METHODS
from llmc.sparse import UniformPlan
from llmc.errors import ConfigError
from llmc.sparse.permutation import assignment_round, permuted_n_m_mask, reallocation_order
from llmc.sparse.ria import ria_score


def _prune(weight, input_norms, sparsity_type="unstructured", sparsity=0.5, **ria):
    cfg = sparse_config(method="RIA", ria=ria,
                        weight={"sparsity": sparsity, "sparsity_type": sparsity_type})
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    METHODS["RIA"](cfg).prune(linear, {"input_norms": input_norms},
                              UniformPlan(cfg.weight).target(0, ""))
    return linear.weight.data == 0


W = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
NORMS = torch.tensor([4.0, 16.0])  # ||X_0|| = 2, ||X_1|| = 4


def test_score_by_hand():
    """Column sums of |W| 4, 6; row sums 3, 7; ||X_j||^0.5 = sqrt 2, 2."""
    expected = torch.tensor([[(1 / 4 + 1 / 3) * 2 ** 0.5, (2 / 6 + 2 / 3) * 2],
                             [(3 / 4 + 3 / 7) * 2 ** 0.5, (4 / 6 + 4 / 7) * 2]])
    torch.testing.assert_close(ria_score(W, NORMS, 0.5), expected, rtol=1e-6, atol=0)
    # a = 0: the relative importance alone; a = 1: times ||X_j|| itself
    torch.testing.assert_close(ria_score(W, NORMS, 0.0),
                               torch.tensor([[1 / 4 + 1 / 3, 1.0], [3 / 4 + 3 / 7, 4 / 6 + 4 / 7]]))
    torch.testing.assert_close(ria_score(W, NORMS, 1.0)[:, 1],
                               torch.tensor([1.0 * 4, (4 / 6 + 4 / 7) * 4]))


def test_unstructured_is_the_references_one_threshold():
    """Scores 0.825, 2.0 / 1.667, 2.476: the reference prunes score <= sorted[int(4 * 0.5)]
    = 2.0, three entries (its `<=` takes the threshold entry too), across rows."""
    assert _prune(W, NORMS).tolist() == [[True, True], [True, False]]


def test_per_outneuron_prunes_a_count_per_row():
    assert _prune(W, NORMS, per_outneuron=True).tolist() == [[True, False], [True, False]]


def test_n_m_against_the_formula():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 16, generator=gen)
    norms = torch.rand(16, generator=gen) + 0.1
    mask = _prune(weight, norms, "2:4", a=0.7)
    w = weight.double().abs()
    score = (w / w.sum(0, keepdim=True) + w / w.sum(1, keepdim=True)) * norms.double() ** 0.35
    for row in range(6):
        for group in range(4):
            cols = slice(4 * group, 4 * group + 4)
            lowest = set(torch.topk(score[row, cols], 2, largest=False)[1].tolist())
            assert {i for i in range(4) if mask[row, cols][i]} == lowest


def test_channel_reallocation_deals_columns_by_total_score_in_a_snake():
    """Column totals 8..1: ranked ascending 7, 6, ..., 0; the k-th quarter fills position k of
    both groups, the 2nd and 4th quarters reversed."""
    score = torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    assert reallocation_order(score, 4).tolist() == [7, 4, 3, 0, 6, 5, 2, 1]


def _kept_total(score, order, n, m):
    permuted = score[:, order].reshape(score.shape[0], -1, m)
    return float(permuted.sort(dim=-1)[0][..., n:].sum())


def test_each_assignment_round_is_the_best_reassignment_of_its_position():
    """Against brute force over every assignment of the position's columns to the groups."""
    torch.manual_seed(0)
    score = torch.rand(5, 12)
    start = reallocation_order(score, 4)
    for position in range(4):
        chosen = assignment_round(score, start, 2, 4, position)
        best = 0.0
        slots = [g * 4 + position for g in range(3)]
        for perm in itertools.permutations(range(3)):
            trial = start.clone()
            trial[slots] = start[[slots[p] for p in perm]]
            best = max(best, _kept_total(score, trial, 2, 4))
        assert _kept_total(score, chosen, 2, 4) == pytest.approx(best, rel=1e-6)
        assert sorted(chosen.tolist()) == list(range(12))


@pytest.mark.parametrize("lsa", [False, True])
def test_a_permuted_mask_is_n_m_in_its_order_and_keeps_at_least_the_direct_score(lsa):
    torch.manual_seed(1)
    score = torch.rand(16, 32) ** 3
    mask, order = permuted_n_m_mask(score, 2, 4, lsa)
    assert (mask[:, order].reshape(16, -1, 4).sum(-1) == 2).all()
    assert (mask.sum(1) == 16).all()
    permuted_kept = float(score[~mask].sum())
    assert permuted_kept == pytest.approx(_kept_total(score, order, 2, 4), rel=1e-5)
    if lsa:  # each round can only raise the total over the heuristic's
        heuristic = _kept_total(score, reallocation_order(score, 4), 2, 4)
        assert permuted_kept >= heuristic * (1 - 1e-6)


def test_reallocation_settings_are_checked():
    with pytest.raises(ConfigError, match="apply to N:M sparsity only"):
        sparse_config(method="RIA", ria={"reallocation": True})
    with pytest.raises(ConfigError, match="set reallocation: True too"):
        sparse_config(method="RIA", ria={"lsa": True}, weight={"sparsity_type": "2:4"})
    with pytest.raises(ConfigError, match="remove sparse.ria.reallocation"):
        sparse_config(method="RIA", refine="dsnot", ria={"reallocation": True},
                      weight={"sparsity_type": "2:4"})


@pytest.mark.parametrize("load", ["memory", "stream"])
def test_a_run_with_reallocation_saves_each_linears_column_order(run_config, tmp_path, load):
    """End to end: column_orders.safetensors beside the model names every block Linear; in its
    order each saved weight is 2:4; results.json points at it; streamed, the same orders and
    weights as in memory, bit for bit."""
    import json

    from safetensors.torch import load_file

    from llmc.cli import main

    runs = {}
    for engine in sorted({"memory", load}):
        save = tmp_path / engine
        assert main(["--config", str(run_config), "--set", "sparse={method: RIA, ria: "
                     "{reallocation: True, lsa: True}}", "--set", "sparse.weight.sparsity_type=2:4",
                     "--set", "eval.eval_pos=[transformed]", "--set", f"model.load={engine}",
                     "--set", f"save.save_path={save}"]) == 0
        results = json.loads((save / "results.json").read_text())
        assert results["column_orders"] == {"file": "column_orders.safetensors", "linears": 14}
        assert results["engine"]["load"] == engine
        weights = {}
        for file in (save / "transformed_model").glob("*.safetensors"):
            weights.update(load_file(str(file)))
        runs[engine] = (load_file(str(save / "column_orders.safetensors")), weights, results)
    orders, weights, results = runs[load]
    assert len(orders) == 14
    for name, order in orders.items():
        weight = weights[f"{name}.weight"]
        assert sorted(order.tolist()) == list(range(weight.shape[1]))
        zeros = (weight[:, order] == 0).reshape(weight.shape[0], -1, 4).sum(-1)
        assert (zeros == 2).all(), name
    memory_orders, memory_weights, memory_results = runs["memory"]
    assert orders.keys() == memory_orders.keys() and weights.keys() == memory_weights.keys()
    assert all(torch.equal(orders[k], memory_orders[k]) for k in orders)
    assert all(torch.equal(weights[k], memory_weights[k]) for k in weights)
    assert results["ppl"] == memory_results["ppl"]
