"""DSnoT's mask refinement: hand-checked swaps, and on random matrices the same masks as a plain
row-by-row loop written from the reference's procedure (llmc/sparse/dsnot.py's docstring)."""
import pytest
import torch
import torch.nn as nn

from llmc.config import sparse_config
from llmc.errors import ConfigError
from llmc.sparse import Target, build_method
from llmc.sparse.dsnot import is_attention


def _refine(weight, sums, variances=None, norms=None, target=Target(0.5), name="self_attn.q_proj",
            **dsnot):
    cfg = sparse_config(method="Wanda", refine="dsnot",
                        weight={"sparsity_type": "2:4"} if target.n_m else {},
                        dsnot={"skip_layer": "no_skip", **dsnot})
    method = build_method(cfg)
    columns = weight.shape[1]
    stats = {"input_norms": torch.ones(columns) if norms is None else norms,
             "input_sums": sums,
             "input_variances": torch.ones(columns) if variances is None else variances}
    linear = nn.Linear(columns, weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    score = method.method.score(linear, stats)
    return method.refine.refine(linear.weight.data, score, stats, target, name)


def test_one_unstructured_swap():
    # Wanda (norms 1) prunes the two smallest |w|: columns 0 and 1. Effects w * sums:
    # [1, 0, -0.2, 4]; the error (pruned effects) is 1 > 0: regrow the largest pruned effect
    # (column 0) and prune the first kept weight with a negative effect (column 2).
    weight = torch.tensor([[1.0, -1.0, 2.0, 4.0]])
    sums = torch.tensor([1.0, 0.0, -0.1, 1.0])
    mask = _refine(weight, sums, max_cycle_time=1)
    assert mask.tolist() == [[False, True, True, False]]
    # |error| = 1 is within a threshold of 2: nothing changes
    assert _refine(weight, sums, update_threshold=2.0).tolist() == [[True, True, False, False]]
    # no cycles: the initial mask
    assert _refine(weight, sums, max_cycle_time=0).tolist() == [[True, True, False, False]]


def test_one_n_m_swap_stays_in_the_group_and_keeps_the_sign():
    # 2:4 prunes columns 0, 1 and 4, 5. Error = effect[4] = 1 > 0: regrow column 4; its group
    # gives up its kept weight of lowest score (column 6, effect 0.3); the error stays positive.
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]])
    sums = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.1, 0.0])
    mask = _refine(weight, sums, target=Target(0.5, (2, 4)), max_cycle_time=1)
    assert mask.tolist() == [[True, True, False, False, False, True, True, False]]
    # more cycles: the row runs out of candidates and stops; every group keeps 2 of 4
    mask = _refine(weight, sums, target=Target(0.5, (2, 4)), max_cycle_time=20)
    assert (mask.reshape(-1, 4).sum(1) == 2).all()
    # a swap that would flip the error's sign (effect[6] = -2: 1 - 2 - 1 < 0) is not made
    sums[6] = -2.0 / 3.0
    mask = _refine(weight, sums, target=Target(0.5, (2, 4)), max_cycle_time=1)
    assert mask.tolist() == [[True, True, False, False, True, True, False, False]]


def test_variance_orders_the_regrowth():
    # Two pruned weights with positive effects 1 and 0.8: by effect alone column 0 regrows;
    # divided by their inputs' variances (4 and 1) column 1 does.
    weight = torch.tensor([[1.0, 0.8, 2.0, -3.0]])
    sums = torch.tensor([1.0, 1.0, 0.0, 0.1])
    plain = _refine(weight, sums, max_cycle_time=1, pow_of_var_regrowing=0.0)
    by_variance = _refine(weight, sums, torch.tensor([4.0, 1.0, 1.0, 1.0]), max_cycle_time=1)
    assert plain.tolist() == [[False, True, False, True]]
    assert by_variance.tolist() == [[True, False, False, True]]


def _plain_unstructured(weight, sums, variances, norms, sparsity, cycles, threshold, power):
    """The reference's unstructured procedure, one row at a time with Python lists."""
    rows, columns = weight.shape
    pruned_count = int(columns * sparsity)
    wanda = weight.abs() * norms.sqrt()
    result = torch.zeros_like(weight, dtype=torch.bool)
    for r in range(rows):
        effect = (weight[r] * sums).tolist()
        order = sorted(range(columns), key=lambda j: (wanda[r, j].item(), j))
        pruned, kept = set(order[:pruned_count]), order[pruned_count:]
        key = [effect[j] / variances[j].item() ** power if j in pruned else 0.0
               for j in range(columns)]
        regrow = sorted(range(columns), key=lambda j: (key[j], j))
        negatives = [j for j in kept if effect[j] < 0]
        positives = [j for j in kept if effect[j] > 0][::-1]
        prune = negatives + positives
        error = sum(effect[j] for j in pruned)
        low, high, first, last = 0, columns - 1, 0, len(prune) - 1
        for _ in range(cycles):
            if abs(error) <= threshold:
                break
            if error > 0:
                grow, high = regrow[high], high - 1
                cut, first = prune[first], first + 1
            else:
                grow, low = regrow[low], low + 1
                cut, last = prune[last], last - 1
            pruned.discard(grow)
            pruned.add(cut)
            error += effect[cut] - effect[grow]
        result[r, sorted(pruned)] = True
    return result


@pytest.mark.parametrize("seed", range(4))
def test_unstructured_refinement_equals_a_plain_loop(seed):
    torch.manual_seed(seed)
    weight = torch.randn(12, 96)
    sums, norms = torch.randn(96), torch.rand(96) + 0.1
    variances = torch.rand(96) + 0.5
    mask = _refine(weight, sums, variances, norms, Target(0.5), max_cycle_time=10,
                   update_threshold=0.01)
    expected = _plain_unstructured(weight, sums, variances, norms, 0.5, 10, 0.01, 1.0)
    assert torch.equal(mask, expected)
    assert (mask.sum(1) == 48).all()


def test_skip_rules_keep_the_initial_mask():
    weight = torch.tensor([[1.0, -1.0, 2.0, 4.0]])
    sums = torch.tensor([1.0, 0.0, -0.1, 1.0])
    initial = [[True, True, False, False]]
    assert _refine(weight, sums, name="mlp.up_proj", skip_layer="mlp").tolist() == initial
    assert _refine(weight, sums, name="fc1", skip_layer="mlp").tolist() == initial
    assert _refine(weight, sums, name="self_attn.q_proj", skip_layer="self_attn").tolist() \
        == initial
    assert _refine(weight, sums, name="self_attn.q_proj", skip_sub_layer="q_proj").tolist() \
        == initial
    assert _refine(weight, sums, name="mlp.up_proj", skip_layer="self_attn",
                   max_cycle_time=1).tolist() != initial
    assert [is_attention(n) for n in ("self_attn.q_proj", "self_attention.dense", "attn.c_proj",
                                      "mlp.down_proj", "fc2", "mlp.experts.0.up_proj")] == \
        [True, True, True, False, False, False]


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="skip_layer 'attn' must be one of"):
        sparse_config(method="Wanda", refine="dsnot", dsnot={"skip_layer": "attn"})
    with pytest.raises(ConfigError, match="must be >= 0"):
        sparse_config(method="Wanda", refine="dsnot", dsnot={"max_cycle_time": -1})
    with pytest.raises(ConfigError, match="not Wanda's variant"):
        sparse_config(method="Wanda", refine="dsnot", use_variant=True)
    with pytest.raises(ConfigError, match="MixGPT does not give"):
        sparse_config(method="MixGPT", refine="dsnot")


def test_after_sparsegpt_dsnot_starts_from_its_one_shot_saliency_and_updates_nothing():
    """The reference's --initial_method sparsegpt: w^2 / U_jj^2 of the dense weights (U the upper
    Cholesky factor of (H + 1% damping)^-1, a dead input's weights counted as zero), one factor
    for the group; the kept weights keep their values (no OBS update)."""
    torch.manual_seed(5)
    x = torch.randn(64, 8)
    x[:, 3] = 0  # a dead input
    hessian = 2 / 4 * x.t() @ x
    cfg = sparse_config(method="SparseGPT", refine="dsnot", dsnot={"skip_layer": "no_skip"})
    method = build_method(cfg)
    linears = {name: nn.Linear(8, 6, bias=False) for name in ("self_attn.q_proj", "self_attn.k_proj")}
    dense = {name: linear.weight.data.clone() for name, linear in linears.items()}
    scores = dict(method.method.group_scores(linears, {"hessian": hessian}))
    h = hessian.clone()
    h[3, 3] = 1
    h += 0.01 * torch.diag(h).mean() * torch.eye(8)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for name, weight in dense.items():
        expected = weight.clone()
        expected[:, 3] = 0
        torch.testing.assert_close(scores[name], expected ** 2 / torch.diag(upper) ** 2)
        assert torch.equal(scores[name], method.method.score(linears[name], {"hessian": hessian}))
    stats = {"hessian": hessian, "input_norms": torch.ones(8), "input_sums": x.sum(0) / 4,
             "input_variances": x.var(0, unbiased=False) + 1}
    method.prune_group(linears, stats, {name: Target(0.5) for name in linears})
    for name, linear in linears.items():
        kept = linear.weight.data != 0
        assert torch.equal(linear.weight.data[kept], dense[name][kept])
        assert ((~kept).sum(1) == 4).all()
