"""No NaN/inf weight is ever saved: the parts outside the blocks (head, embeddings, final norm)
with evaluation off, in memory and streamed; a method whose arithmetic overflows on its settings
is an error naming the Linear and the settings; settings past a known bound are refused."""
import pytest
import torch
from safetensors.torch import load_file

import llmc.sparse.admm
from conftest import error_line
from test_models import FAST, edit_weights, model_path, nothing_written, save_dir

ADMM = ("--set", "sparse.update=admm", "--set", "sparse.admm.iterations=2")


@pytest.mark.parametrize("load", ["memory", "stream"])
@pytest.mark.parametrize("name", ["lm_head.weight", "model.norm.weight"])
def test_a_non_finite_weight_outside_the_blocks_is_never_saved(run_config, cli, name, load):
    edit_weights(model_path(run_config), lambda w: w[name].view(-1).__setitem__(3, float("nan")))
    code, stderr = cli("--config", run_config, *FAST, "--set", f"model.load={load}")
    line = error_line(stderr)
    assert code == 2 and f"{name} holds 1 NaN and 0 inf value(s)" in line, line
    assert "no model was saved" in line and "is corrupt" in line
    assert nothing_written(run_config)


def test_a_step_that_overflows_names_the_linear_and_the_settings(run_config, cli, monkeypatch):
    update = llmc.sparse.admm.admm_update
    monkeypatch.setattr(llmc.sparse.admm, "admm_update",
                        lambda *args, **kwargs: update(*args, **kwargs) * float("inf"))
    code, stderr = cli("--config", run_config, *FAST, *ADMM)
    line = error_line(stderr)
    assert code == 2
    assert "pruning made model.layers.0.self_attn." in line and "inf value(s)" in line, line
    assert "Wanda + admm" in line and "update.rho: 1.0" in line
    assert nothing_written(run_config)


@pytest.mark.parametrize("rho", ["1e30", "0", "-1"])
def test_an_admm_rho_past_its_bound_is_refused_before_any_work(run_config, cli, rho):
    code, stderr = cli("--config", run_config, *FAST, *ADMM, "--set", f"sparse.admm.rho={rho}")
    line = error_line(stderr)
    assert code == 2 and "sparse.admm" in line and "rho in (0, 1e+06]" in line, line
    assert nothing_written(run_config)


def test_saved_weights_are_all_finite_on_a_plain_run(run_config, cli):
    code, stderr = cli("--config", run_config, *FAST)
    assert code == 0, stderr
    for shard in (save_dir(run_config) / "transformed_model").glob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(shard).values())
