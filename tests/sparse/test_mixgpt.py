"""MixGPT: Algorithm 1 and the saliency criteria against hand computations, the plan built from
measured sensitivities, and a pruned model whose Linears show the plan."""
import math

import numpy as np
import pytest
import torch

from conftest import arch_adapter, tiny_model
from llmc.config import CalibCfg, sparse_config
from llmc.errors import ConfigError, LlmcError
from llmc.models import ModelHandle
from llmc.registry import METHODS, MODELS
from llmc.runner import Calibration, prune_blockwise
from llmc.sparse.allocation import Target
from llmc.sparse.mixgpt import average_ranks, isc_saliency, mixed_sparsity, weighted_to
from llmc.sparse.sparsegpt import inverse_hessian_factor, obs_prune, obs_saliency

CPU = torch.device("cpu")
LLAMA = MODELS["Llama"]


def test_algorithm_1_by_hand_with_ties():
    # ranks of [3, 1, 4, 1, 5]: the two 1s share (0 + 1) / 2; L = 0.4, R = 0.6, step 0.2 / 4
    assert list(average_ranks([3, 1, 4, 1, 5])) == [2, 0.5, 3, 0.5, 4]
    got = mixed_sparsity([3, 1, 4, 1, 5], sparsity=0.5, alpha=0.1)
    assert np.allclose(got, [0.5, 0.575, 0.45, 0.575, 0.4], atol=1e-12)
    assert got.mean() == pytest.approx(0.5, abs=1e-12)


def test_algorithm_1_endpoints_and_order():
    got = mixed_sparsity([0.2, -1.0, 7.0, 3.0], sparsity=0.6, alpha=0.15)
    assert got[1] == pytest.approx(0.75) and got[2] == pytest.approx(0.45)  # p + a, p - a
    assert list(np.argsort(-got)) == [1, 0, 3, 2]  # least sensitive is the sparsest
    assert got.mean() == pytest.approx(0.6, abs=1e-12)
    assert np.allclose(mixed_sparsity([1.0, 1.0, 1.0], 0.5, 0.1), 0.5)  # all tied: uniform
    assert list(mixed_sparsity([4.0], 0.5, 0.1)) == [0.5]  # one unit: K - 1 = 0


def test_weighted_shift_makes_the_parameter_weighted_mean_exact():
    # sizes 1 and 3: weighted mean of [.6, .4] is .45, so both move up by .05
    got = weighted_to([0.6, 0.4], [1, 3], 0.5)
    assert np.allclose(got, [0.65, 0.45])
    assert np.dot(got, [1, 3]) / 4 == pytest.approx(0.5)


def _three_columns():
    """H = [[4, 2, 0], [2, 2, 0], [0, 0, 1]]: its inverse is [[.5, -.5], [-.5, 1]] (+) [1], whose
    upper Cholesky factor has U_mm^2 = [.5, .5, 1]. With w = [1, 1.1, 0.5]:
    OBS w^2 / U_mm^2 = [2, 2.42, .25]; ISC w^2 (H_mm + 1/U_mm^2) = [1 (4 + 2), 1.21 (2 + 2),
    .25 (1 + 1)] = [6, 4.84, .5]. So OBS ranks column 0 below column 1, and ISC the reverse."""
    hessian = torch.tensor([[4.0, 2.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 1.0]],
                           dtype=torch.float64)
    upper, dead, diag = inverse_hessian_factor(hessian, percdamp=0.0)
    assert not dead.any()
    assert torch.allclose(torch.diag(upper) ** 2, torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))
    return torch.tensor([[1.0, 1.1, 0.5]], dtype=torch.float64), upper, diag


def test_isc_and_obs_scores_by_hand():
    weight, upper, diag = _three_columns()
    u_diag = torch.diag(upper).reshape(1, -1)
    assert torch.allclose(obs_saliency(weight, u_diag, slice(0, 3)),
                          torch.tensor([[2.0, 2.42, 0.25]], dtype=torch.float64))
    assert torch.allclose(isc_saliency(diag)(weight, u_diag, slice(0, 3)),
                          torch.tensor([[6.0, 4.84, 0.5]], dtype=torch.float64))


def test_isc_and_obs_prune_different_weights():
    # int(3 * 0.34) = 1 and SparseGPT's `score <= sorted[1]` rule: the two lowest scores go.
    weight, upper, diag = _three_columns()
    obs, _ = obs_prune(weight.clone(), upper, Target(0.34), blocksize=3)
    isc, _ = obs_prune(weight.clone(), upper, Target(0.34), blocksize=3,
                       saliency=isc_saliency(diag))
    assert obs[0, 0] == 0 and obs[0, 1] != 0 and obs[0, 2] == 0  # column 1 compensates for 0
    assert isc[0, 0] == 1.0 and isc[0, 1] == 0 and isc[0, 2] == 0  # no later column to update


def _cfg(sparsity=0.5, granularity="linear", weighted=False, sparsity_type="unstructured",
         alpha=0.1, **sensitivity):
    return sparse_config(method="MixGPT", blocksize=16,
                         weight={"sparsity": sparsity, "sparsity_type": sparsity_type},
                         mixgpt={"granularity": granularity, "weighted": weighted, "alpha": alpha,
                                 "sensitivity": {"max_iter": 20, **sensitivity}})


def _batches(n=3, length=16):
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(0, 300, (1, length), generator=gen) for _ in range(n)]


def _allocate(model, cfg, batches=None):
    method = METHODS["MixGPT"](cfg)
    calibration = Calibration(ModelHandle(model, LLAMA), batches or _batches(), CPU)
    return method, method.allocate(cfg.weight, calibration)


def test_plan_follows_the_measured_sensitivities():
    model = tiny_model("llama", num_hidden_layers=2)
    method, plan = _allocate(model, _cfg())
    described = plan.describe()
    assert described["units"] == [f"{i}.{n}" for i in range(2) for n in LLAMA.linear_names()]
    assert described["score_name"] == "sensitivity"
    sparsity, score = np.array(described["sparsity"]), np.array(described["score"])
    assert np.allclose(sparsity, mixed_sparsity(score, 0.5, 0.1))
    assert sparsity.max() == pytest.approx(0.6) and sparsity.min() == pytest.approx(0.4)
    assert method.describe()["sensitivity"]["probes"] == 20


def test_same_seed_same_traces_and_normalize_divides_by_size():
    model = tiny_model("llama", num_hidden_layers=2)
    calibration = Calibration(ModelHandle(model, LLAMA), _batches(), CPU)
    first = METHODS["MixGPT"](_cfg()).measure_sensitivity(calibration)
    again = METHODS["MixGPT"](_cfg()).measure_sensitivity(calibration)
    other = METHODS["MixGPT"](_cfg(seed=1)).measure_sensitivity(calibration)
    # equal: the same probes through the same operations; another seed, other probes
    assert first["traces"] == again["traces"] and first["traces"] != other["traces"]
    _, plan = _allocate(model, _cfg(normalize=False))
    raw = plan.describe()["score"]
    _, plan = _allocate(model, _cfg())
    assert first["linears"] == [[i, n] for i in range(2) for n in LLAMA.linear_names()]
    assert plan.describe()["score"] == pytest.approx(
        [r / numel for r, numel in zip(raw, first["numel"])])


def test_pruned_linears_show_the_per_linear_plan():
    model = tiny_model("llama", num_hidden_layers=2)
    cfg = _cfg(weighted=True)
    method, plan = _allocate(model, cfg)
    prune_blockwise(ModelHandle(model, LLAMA), method, plan, _batches(), CPU, sparsity_out=True)
    zeros, total = 0, 0
    for index, layer in enumerate(model.model.layers):
        for name in LLAMA.linear_names():
            weight = layer.get_submodule(name).weight
            achieved = float((weight == 0).float().mean())
            assert abs(achieved - plan.target(index, name).sparsity) <= 1 / weight.shape[1], name
            zeros, total = zeros + int((weight == 0).sum()), total + weight.numel()
    assert zeros / total == pytest.approx(0.5, abs=0.01)  # weighted: the overall mean is p


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_blockwise_and_whole_model_traces_give_the_same_plan(arch):
    """The sensitivity pass one block at a time (the default) and the whole model's double
    backward: the same traces bit for bit, so the same plan."""
    model = tiny_model(arch, num_hidden_layers=2)
    calibration = Calibration(ModelHandle(model, arch_adapter(arch)), _batches(2), CPU)
    records, plans = [], []
    for blockwise in (True, False):
        cfg = _cfg(blockwise=blockwise, max_iter=4)
        method = METHODS["MixGPT"](cfg)
        records.append(method.measure_sensitivity(calibration))
        plans.append(method.allocate(cfg.weight, calibration).describe())
    assert records[0]["traces"] == records[1]["traces"] and records[0]["probes"] == 4
    assert plans[0] == plans[1]


def test_layer_granularity_sums_a_layers_linears():
    model = tiny_model("llama", num_hidden_layers=3)
    calibration = Calibration(ModelHandle(model, LLAMA), _batches(), CPU)
    record = METHODS["MixGPT"](_cfg()).measure_sensitivity(calibration)
    _, plan = _allocate(model, _cfg(granularity="layer"))
    described = plan.describe()
    assert described["units"] == ["0", "1", "2"]
    average = {tuple(linear): trace / numel for linear, trace, numel
               in zip(record["linears"], record["traces"], record["numel"])}
    for index, score in enumerate(described["score"]):
        expected = sum(average[(index, n)] for n in LLAMA.linear_names())
        assert score == pytest.approx(expected)
    assert sorted(described["sparsity"]) == pytest.approx([0.4, 0.5, 0.6])


def test_n_m_plan_moves_n_by_rank():
    model = tiny_model("llama", num_hidden_layers=3)
    cfg = _cfg(granularity="layer", sparsity_type="4:8", alpha=0.125)  # 4/8 +- 1/8
    _, plan = _allocate(model, cfg)
    assert sorted(t.n_m for t in plan.targets.values()) == [(3, 8), (4, 8), (5, 8)]


@pytest.mark.parametrize("keys,message", [
    (dict(mixgpt={"granularity": "block"}), "granularity 'block'"),
    (dict(mixgpt={"saliency": "snip"}), "saliency 'snip'"),
    (dict(mixgpt={"alpha": 0.5}), "alpha 0.5"),
    (dict(mixgpt={"alpha": -0.1}), "alpha -0.1"),
    (dict(mixgpt={"sensitivity": {"max_iter": 0}}), "max_iter must be >= 1"),
    (dict(weight={"sparsity_type": "2:4"}, mixgpt={"weighted": True}),
     "weighted applies to unstructured"),
])
def test_bad_settings_are_one_config_error(keys, message):
    with pytest.raises(ConfigError, match=message):
        sparse_config(method="MixGPT", **keys)


def test_more_sensitivity_windows_than_calibration_is_refused():
    cfg = sparse_config(method="MixGPT", mixgpt={"sensitivity": {"n_samples": 8}})
    with pytest.raises(ConfigError, match="n_samples 8 is more than the 4 calibration windows"):
        METHODS["MixGPT"].check_calibration(cfg, CalibCfg(n_samples=4))


def test_weighted_plan_out_of_range_is_an_error():
    cfg = _cfg(sparsity=0.85, weighted=True)  # p + alpha = 0.95; the shift may pass 1
    model = tiny_model("llama", num_hidden_layers=2)
    method = METHODS["MixGPT"](cfg)
    units = [[i, n] for i in range(2) for n in LLAMA.linear_names()]
    big = [0, "mlp.down_proj"]  # most sensitive, so the least sparse (0.75), and most weights
    method.measure_sensitivity = lambda calibration: {
        "linears": units, "traces": [1e9 if u == big else float(k) for k, u in enumerate(units)],
        "numel": [1000 if u == big else 1 for u in units]}
    with pytest.raises(LlmcError, match=r"outside \[0, 1\); lower alpha"):
        method.allocate(cfg.weight, Calibration(ModelHandle(model, LLAMA), _batches(), CPU))
    assert math.isclose(cfg.weight.sparsity, 0.85)
