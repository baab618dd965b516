"""The out-of-core bench's pure parts: the synthetic checkpoint's shapes (built on the meta
device, nothing allocated) and the figures it derives from a run's results.json. The runs
themselves are a report (python scripts/bench.py --out-of-core), not a test."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_memory  # noqa: E402


def test_the_synthetic_checkpoint_has_tinyllamas_shapes():
    from transformers import AutoModelForCausalLM

    config = bench_memory.synthetic_config(49152)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    block = model.model.layers[0]
    assert len(model.model.layers) == 22
    assert tuple(block.self_attn.q_proj.weight.shape) == (2048, 2048)
    assert tuple(block.self_attn.k_proj.weight.shape) == (256, 2048)  # 4 KV heads of 64
    assert tuple(block.mlp.down_proj.weight.shape) == (2048, 5632)
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied
    params = sum(p.numel() for p in model.parameters())
    assert params * 4 == pytest.approx(4.7e9, rel=0.02)  # ~4.4 GiB in fp32


def results(load, prune, checkpoint=None, fsync=None):
    timings = {"prune_total": prune, "prune_write": 1.0}
    if checkpoint is not None:
        timings.update(prune_checkpoint=checkpoint, resume_fsync=fsync)
    return {"engine": {"load": load}, "timings": timings,
            "sparsity": {"per_block": [0.5] * 11}}


def test_figures_and_ratios():
    stream = bench_memory.figures_of("m", "wanda", "stream", 4 * 2**30, 2**30,
                                     results("stream", 11.0, checkpoint=1.0, fsync=0.25))
    assert stream["rss_over_checkpoint"] == 0.25 and stream["peak_rss_gib"] == 1.0
    assert stream["checkpoint_over_rest"] == 0.1  # 1 s of checkpoints on 10 s of the rest
    assert stream["prune_s_per_block"] == 1.0  # 11 s over 11 blocks
    memory = bench_memory.figures_of("m", "wanda", "memory", 4 * 2**30, 5 * 2**30,
                                     results("memory", 10.0))
    assert "checkpoint_s" not in memory
    other = bench_memory.figures_of("m", "sparsegpt", "stream", 1, 1, results("stream", 3.0))
    assert bench_memory.ratios([stream, memory, other]) == [
        {"model": "m", "method": "wanda", "stream_over_memory_prune": 1.1}]


def test_the_default_plan_and_explicit_lists():
    default = bench_memory.planned_runs(None, None, None)
    assert ("synthetic", "sparsegpt", "stream") in default
    assert ("synthetic", "sparsegpt", "memory") not in default  # ~12 min that tells nothing new
    assert {(m, e) for model, m, e in default if model == "builtin"} == {
        (m, e) for m in ("wanda", "sparsegpt") for e in ("memory", "stream")}
    assert bench_memory.planned_runs("builtin", "wanda", None) == [
        ("builtin", "wanda", "memory"), ("builtin", "wanda", "stream")]


def test_the_7b_shape_is_llama_2_7bs():
    from transformers import AutoModelForCausalLM

    config = bench_memory.synthetic_config(32000, bench_memory.SEVEN_B_SHAPES)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 6_738_415_616  # Llama-2-7B's count


def test_a_sensitivity_row_is_per_probe_and_block():
    record = {"seconds": 60.0, "probes": 3}
    row = bench_memory.sensitivity_figures("m", "mixgpt-sensitivity", "stream", 4 * 2**30,
                                           2**30, record, blocks=10)
    assert row["prune_s"] == 60.0 and row["probes"] == 3
    assert row["prune_s_per_block"] == 2.0  # 60 s over 3 probes of 10 blocks
    assert row["rss_over_checkpoint"] == 0.25
    assert bench_memory.ratios([row]) == []  # no in-memory row to compare with


def test_the_moe_shape_is_a_2b_qwen3_moe_with_8_experts():
    from transformers import AutoModelForCausalLM

    config = bench_memory.synthetic_config(49152, bench_memory.MOE_SHAPES)
    assert config.model_type == "qwen3_moe"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 2_114_428_928
    assert model.model.layers[0].mlp.experts.gate_up_proj.shape == (8, 2 * 1408, 2048)
