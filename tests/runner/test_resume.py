"""The resume state's parts on their own: activations, plans and RNG states read back exactly;
the fingerprint covers what changes the weights and nothing else; a save interrupted between
its steps leaves the previous state loadable. (Kills of real runs: tests/reliability/
test_resume.py.)"""
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from llmc.config import Config
from llmc.config.typed import build
from llmc.errors import LlmcError
from llmc.runner.resume import ResumeState, differing_keys, resume_fingerprint
from llmc.sparse.allocation import Target, UniformPlan, UnitPlan, plan_from_dict, plan_to_dict


VERIFIED = ({}, "0" * 64)  # no finished shards; the checkpoint's sha256


def hidden_states():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 5, 8, generator=gen),
            torch.randn(2, 3, 8, generator=gen).to(torch.bfloat16),
            torch.randn(1, 7, 8, generator=gen).to(torch.float16)]


def test_activations_plan_and_carried_results_read_back_exactly(tmp_path):
    state = ResumeState(tmp_path, {"model": {"path": "/m"}}, num_blocks=3)
    hidden = hidden_states()
    plan = UnitPlan("owl", {(0, None): Target(0.55), (1, None): Target(0.45)}, "outlier ratio",
                    [0.1, 0.2], {"lambda": 0.08})
    state.save(2, hidden, plan_to_dict(plan), {"ppl": {"pretrain": {"wikitext2": 12.5}}},
               *VERIFIED)
    point = ResumeState(tmp_path, {"model": {"path": "/m"}}, 3).load(overwrite=False)
    assert point.next_block == 2
    for saved, read in zip(hidden, point.hidden, strict=True):
        assert read.dtype == saved.dtype and torch.equal(read, saved)
    assert plan_from_dict(point.plan).describe() == plan.describe()
    assert point.carried == {"ppl": {"pretrain": {"wikitext2": 12.5}}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["activations-00002.safetensors",
                                                          "state.json"]


@pytest.mark.parametrize("plan", [
    UniformPlan(type("W", (), {"n_m": None, "sparsity": 0.1 + 0.2})()),
    UniformPlan(type("W", (), {"n_m": (2, 4), "sparsity": 0.5})()),
    UnitPlan("mixgpt", {(0, "q"): Target(0.3, (3, 8)), (0, "k"): Target(1 / 3)}, "trace",
             [1e-7, 2.5], {"alpha": 0.125}),
])
def test_plans_round_trip_through_json(plan):
    back = plan_from_dict(json.loads(json.dumps(plan_to_dict(plan))))
    assert back.describe() == plan.describe()
    for key in [(0, "q"), (0, "k")]:
        assert back.target(*key) == plan.target(*key)


def test_rng_states_are_restored(tmp_path):
    state = ResumeState(tmp_path, {}, 2)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state.save(1, [], plan_to_dict(UniformPlan(type("W", (), {"n_m": None,
                                                             "sparsity": 0.5})())), {}, *VERIFIED)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ResumeState(tmp_path, {}, 2).load(False).restore_rng()
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_a_save_killed_before_its_rename_leaves_the_previous_state(tmp_path, monkeypatch):
    uniform = plan_to_dict(UniformPlan(type("W", (), {"n_m": None, "sparsity": 0.5})()))
    state = ResumeState(tmp_path, {}, 4)
    state.save(1, hidden_states(), uniform, {}, *VERIFIED)

    def killed(*args):
        raise KeyboardInterrupt  # what a signal does at os.replace

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        state.save(2, hidden_states(), uniform, {}, *VERIFIED)
    monkeypatch.undo()
    point = ResumeState(tmp_path, {}, 4).load(False)
    assert point.next_block == 1 and torch.equal(point.hidden[0], hidden_states()[0])


def test_another_fingerprint_is_refused_naming_the_keys_unless_overwrite(tmp_path):
    ResumeState(tmp_path, {"sparse": {"weight": {"sparsity": 0.5}}, "seed": 1}, 2).save(
        1, [], {"kind": "uniform", "sparsity": 0.5, "n_m": None}, {}, *VERIFIED)
    other = ResumeState(tmp_path, {"sparse": {"weight": {"sparsity": 0.6}}, "seed": 1}, 2)
    with pytest.raises(LlmcError, match=r"another sparse\.weight\.sparsity; rerun"):
        other.load(overwrite=False)
    assert (tmp_path / "state.json").exists()
    assert other.load(overwrite=True) is None
    assert not (tmp_path / "state.json").exists()


def test_a_state_that_does_not_parse_starts_over(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    assert ResumeState(tmp_path, {}, 2).load(False) is None
    assert not (tmp_path / "state.json").exists()


def test_differing_keys_are_dotted_paths():
    assert differing_keys({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 5}, "e": 3}) == \
        ["a.c", "d", "e"]


def test_the_fingerprint_covers_what_changes_weights_and_not_eval_or_save(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    weights = model / "model.safetensors"
    weights.write_bytes(b"x" * 10)

    def fingerprint(**sections):
        raw = {"model": {"path": str(model)}, **sections}
        return resume_fingerprint(build(Config, raw), [weights], model, "tokens", "cpu")

    base = fingerprint()
    assert fingerprint(eval={"seq_len": 64, "eval_pos": []}) == base
    assert fingerprint(save={"save_path": "/elsewhere", "overwrite": True}) == base
    assert fingerprint(base={"offload_activations": True}) == base
    assert fingerprint(model={"path": str(model), "load": "memory"}) == base
    for changed in [dict(sparse={"weight": {"sparsity": 0.9}}), dict(calib={"seq_len": 64}),
                    dict(base={"seed": 3}), dict(model={"path": str(model),
                                                        "torch_dtype": "float16"})]:
        assert fingerprint(**changed) != base, changed
    weights.write_bytes(b"y" * 11)
    assert differing_keys(base, fingerprint()) == ["model.weight_files"]
    (model / "config.json").write_text('{"model_type": "llama", "x": 1}')
    assert "model.config_sha256" in differing_keys(base, fingerprint())
    assert resume_fingerprint(build(Config, {"model": {"path": str(model)}}), [weights], model,
                              "other tokens", "cpu")["calib_tokens_sha256"] == "other tokens"


@pytest.mark.parametrize("changed", ["shard", "activations"])
def test_a_file_the_state_names_that_changed_starts_over(tmp_path, changed):
    """Every file the state relies on carries the sha256 it was written with: one that no
    longer has it (a byte changed, same size) is never resumed from."""
    shards, resume = tmp_path / "shards", tmp_path / "resume"
    shards.mkdir()
    shard = shards / "model-00002-of-00004.safetensors"
    shard.write_bytes(b"block 0's weights")
    state = ResumeState(resume, {}, 3)
    state.save(1, hidden_states(), {"kind": "uniform", "sparsity": 0.5, "n_m": None}, {},
               {shard.name: hashlib.sha256(shard.read_bytes()).hexdigest()}, "0" * 64)
    assert ResumeState(resume, {}, 3).load(False).shard_sha256 == state_shards(resume)
    damaged = shard if changed == "shard" else resume / "activations-00001.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 1
    damaged.write_bytes(bytes(data))
    assert ResumeState(resume, {}, 3).load(False) is None
    assert not (resume / "state.json").exists()


def state_shards(resume) -> dict:
    return json.loads((resume / "state.json").read_text())["shards"]
