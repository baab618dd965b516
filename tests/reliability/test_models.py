"""Bad models and checkpoints: each a single `llmc: error:` line naming the file, key or Linear
and the fix, exit 2, nothing written; the ones knowable without weights stop before the tokenizer
and data. Also NaN/inf in weights, block outputs and perplexity, N:M widths, and sequence lengths
against the position limit. (The built-in model's cache and the fingerprint: test_model_cache.py.)
"""
import json
import os
import struct
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import llmc.pipeline
from conftest import arch_model, error_line, save_model_dir, tiny_model
from llmc.config import load_config
from llmc.errors import LlmcError
from llmc.models import preflight

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ("--set", "eval.eval_pos=[]", "--set", "calib.n_samples=2")


def model_path(run_config) -> Path:
    return Path(yaml.safe_load(run_config.read_text())["model"]["path"])


def save_dir(run_config) -> Path:
    return Path(yaml.safe_load(run_config.read_text())["save"]["save_path"])


def nothing_written(run_config):
    save = save_dir(run_config)
    return not (save / "results.json").exists() and not (save / "transformed_model").exists()


def edit_json(file: Path, **changes):
    data = json.loads(file.read_text())
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del data[key]
    file.write_text(json.dumps(data))


def edit_weights(directory: Path, edit):
    """Rewrite model.safetensors after `edit(state_dict)`."""
    weights = load_file(directory / "model.safetensors")
    edit(weights)
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


def cut(file: Path, keep):
    data = file.read_bytes()
    file.write_bytes(data[:keep(len(data))])


def to_pytorch_bin(directory: Path, edit=lambda weights: None):
    weights = load_file(directory / "model.safetensors")
    edit(weights)
    (directory / "model.safetensors").unlink()
    torch.save(weights, directory / "pytorch_model.bin")


def to_shards(directory: Path):
    tiny_model("llama").save_pretrained(directory, max_shard_size="20KB")
    (directory / "model.safetensors").unlink(missing_ok=True)
    return sorted(directory.glob("model-*.safetensors"))


def rename_header_dtype(directory: Path):
    file = directory / "model.safetensors"
    data = file.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + length].replace(b'"F32"', b'"Q32"', 1)
    file.write_bytes(data[:8] + header + data[8 + length:])


def to_gpt2(directory: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    for file in directory.glob("model*.safetensors"):
        file.unlink()
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4,
                               n_positions=256)).save_pretrained(directory)


def drop(name):
    return lambda weights: weights.pop(name)


def remove_tokenizer(directory: Path):
    for file in directory.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            file.unlink()


# name -> (break the tiny Llama directory d, words the error must hold, whether it must stop
# before the tokenizer is loaded, i.e. in the preflight)
BROKEN = {
    "path_is_config_file": (None, ["config.json' is a file", "point it at the directory"], True),
    "empty_directory": (lambda d: [f.unlink() for f in d.iterdir()],
                        ["has no config.json"], True),
    "config_not_json": (lambda d: (d / "config.json").write_text("{ nope"),
                        ["config.json cannot be read as JSON"], True),
    "config_a_list": (lambda d: (d / "config.json").write_text("[1, 2]"),
                      ["config.json has no model_type"], True),
    "config_without_model_type": (lambda d: edit_json(d / "config.json", model_type=None),
                                  ["config.json has no model_type"], True),
    "gpt2_as_llama": (to_gpt2, ["gpt2 checkpoint", "no llmc adapter supports",
                                "supported model types: baichuan, bloom, deepseek_v3"], True),
    "unknown_model_type": (lambda d: edit_json(d / "config.json", model_type="zebra"),
                           ["zebra checkpoint", "supported model types"], True),
    "quantized_checkpoint": (lambda d: edit_json(d / "config.json", quantization_config={
        "quant_method": "gptq", "bits": 4}), ["is a quantized checkpoint", "gptq"], True),
    "peft_adapter_directory": (lambda d: [[f.unlink() for f in d.iterdir()],
                                          (d / "adapter_config.json").write_text("{}")],
                               ["has no config.json", "PEFT adapter"], True),
    "hub_cache_folder": (lambda d: [[f.unlink() for f in d.iterdir()],
                                    (d / "snapshots" / "abc").mkdir(parents=True)],
                         ["has no config.json", "snapshots/<revision>"], True),
    "qwen2_config_as_llama": (lambda d: edit_json(d / "config.json", model_type="qwen2"),
                              ["qwen2 checkpoint; set model.type: Qwen2"], True),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(),
                   ["holds no model weights", "model.safetensors"], True),
    "weights_a_dangling_link": (lambda d: [(d / "model.safetensors").unlink(),
                                           (d / "model.safetensors").symlink_to(d / "blobs" / "x")],
                                ["holds no model weights", "model.safetensors is a link to a "
                                 "file that is not there"], True),
    "unindexed_shard": (lambda d: (d / "model.safetensors").rename(d / "model-00001.safetensors"),
                        ["holds no model weights", "no model.safetensors.index.json"], True),
    "gguf_only": (lambda d: [(d / "model.safetensors").unlink(),
                             (d / "model.Q4.gguf").write_bytes(b"GGUF")],
                  ["holds no model weights", "GGUF"], True),
    "safetensors_truncated": (lambda d: cut(d / "model.safetensors", lambda n: n // 2),
                              ["model.safetensors is not a whole safetensors file",
                               "truncated"], True),
    "safetensors_short_by_4_bytes": (lambda d: cut(d / "model.safetensors", lambda n: n - 4),
                                     ["model.safetensors is not a whole safetensors file"], True),
    "safetensors_garbage": (lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096)),
                            ["model.safetensors is not a whole safetensors file"], True),
    "safetensors_empty": (lambda d: (d / "model.safetensors").write_bytes(b""),
                          ["model.safetensors is not a whole safetensors file", "0 bytes"], True),
    "safetensors_padded": (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes() + bytes(64)),
        ["model.safetensors is not a whole safetensors file"], True),
    "safetensors_unknown_dtype": (rename_header_dtype, ["Q32"], True),
    "shard_missing": (lambda d: to_shards(d)[1].unlink(),
                      ["model.safetensors.index.json lists 1 shard(s) that are not in",
                       "model-00002-of-"], True),
    "shard_truncated": (lambda d: cut(to_shards(d)[2], lambda n: n - 100),
                        ["model-00003-of-", "is not a whole safetensors file"], True),
    "shard_index_not_json": (lambda d: [to_shards(d),
                                        (d / "model.safetensors.index.json").write_text("{x")],
                             ["model.safetensors.index.json is not a valid weight index"], True),
    "shard_index_without_map": (lambda d: [to_shards(d), (d / "model.safetensors.index.json")
                                           .write_text('{"metadata": {}}')],
                                ["is not a valid weight index", "weight_map"], True),
    "bin_truncated": (lambda d: [to_pytorch_bin(d), cut(d / "pytorch_model.bin",
                                                        lambda n: n - 200)],
                      ["pytorch_model.bin is not a whole PyTorch checkpoint"], True),
    "bin_garbage": (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
                    ["pytorch_model.bin is not a whole PyTorch checkpoint"], True),
    "no_tokenizer": (remove_tokenizer, ["has no tokenizer", "tokenizer.json"], True),
    "config_wider_than_weights": (lambda d: edit_json(d / "config.json", intermediate_size=48),
                                  ["has shape [32, 64] but config.json makes it [32, 48]",
                                   "config.json does not belong to these weights"], True),
    "config_more_blocks_than_weights": (
        lambda d: edit_json(d / "config.json", num_hidden_layers=3),
        ["the weights have no model.layers.2.self_attn.q_proj.weight"], True),
    "block_weight_missing": (lambda d: edit_weights(d, drop("model.layers.1.mlp.up_proj.weight")),
                             ["the weights have no model.layers.1.mlp.up_proj.weight"], True),
    "zero_blocks": (lambda d: edit_json(d / "config.json", num_hidden_layers=0),
                    ["has no decoder blocks"], True),
    "heads_do_not_divide_width": (lambda d: edit_json(d / "config.json", num_attention_heads=5),
                                  ["hidden size (32)"], True),
    # found by the tokenizer or by loading, after the preflight
    "tokenizer_json_garbage": (lambda d: (d / "tokenizer.json").write_text("garbage{"),
                               ["its tokenizer does not load"], False),
    "tokenizer_vocab_only": (lambda d: [remove_tokenizer(d), (d / "vocab.json").write_text("{}")],
                             ["its tokenizer does not load"], False),
    "lm_head_missing": (lambda d: edit_weights(d, drop("lm_head.weight")),
                        ["the weights lack 1 tensor(s) the model needs (lm_head.weight)"], False),
    "bin_block_weight_missing": (lambda d: to_pytorch_bin(
        d, drop("model.layers.0.mlp.up_proj.weight")),
        ["the weights lack 1 tensor(s)", "model.layers.0.mlp.up_proj.weight"], False),
    "bin_shape_mismatch": (lambda d: [to_pytorch_bin(d),
                                      edit_json(d / "config.json", intermediate_size=48)],
                           ["loading the model failed", "does not match its config.json"], False),
    "embeddings_fewer_than_tokenizer_ids": (
        lambda d: [edit_json(d / "config.json", vocab_size=100),
                   edit_weights(d, lambda w: w.update(
                       {k: w[k][:100].clone() for k in ("model.embed_tokens.weight",
                                                        "lm_head.weight")}))],
        ["gives token id", "only 100 token embeddings", "does not belong to these weights"],
        False),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_checkpoint_is_one_error_line(kind, run_config, cli, monkeypatch):
    breaking, words, before_tokenizer = BROKEN[kind]
    directory = model_path(run_config)
    path = directory / "config.json" if breaking is None else directory
    if breaking is not None:
        breaking(directory)
    if before_tokenizer:
        monkeypatch.setattr(llmc.pipeline, "load_tokenizer",
                            lambda cfg: pytest.fail("the tokenizer was loaded before the error"))
    code, stderr = cli("--config", run_config, "--set", f"model.path={path}", *FAST)
    line = error_line(stderr)
    assert code == 2
    assert str(directory) in line or "model.type" in line, line
    for word in words:
        assert word in line, line
    assert nothing_written(run_config)


# ---------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize("method", ["Wanda", "Magnitude"])
def test_nan_weight_in_block_1_names_the_parameter(method, run_config, cli):
    def poison(weights):
        weights["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")

    edit_weights(model_path(run_config), poison)
    code, stderr = cli("--config", run_config, "--set", f"sparse.method={method}", *FAST)
    line = error_line(stderr)
    assert code == 2
    assert "model.layers.1.mlp.up_proj.weight holds 1 NaN and 0 inf value(s)" in line
    assert "is corrupt" in line and str(model_path(run_config)) in line
    assert nothing_written(run_config)


def test_inf_in_the_embeddings_is_found_before_any_block(run_config, cli):
    edit_weights(model_path(run_config),
                 lambda w: w["model.embed_tokens.weight"].__setitem__((7, 0), float("inf")))
    code, stderr = cli("--config", run_config, *FAST)
    line = error_line(stderr)
    assert code == 2 and "model.embed_tokens.weight holds 0 NaN and 1 inf value(s)" in line
    assert "is corrupt" in line and nothing_written(run_config)


def test_weight_beyond_float16_range_suggests_float32(run_config, cli):
    edit_weights(model_path(run_config),
                 lambda w: w["model.layers.0.mlp.down_proj.weight"].__setitem__((1, 2), 1e6))
    code, stderr = cli("--config", run_config, "--set", "model.torch_dtype=float16", *FAST)
    line = error_line(stderr)
    assert code == 2 and "model.layers.0.mlp.down_proj.weight holds 0 NaN and 1 inf" in line
    assert "beyond torch.float16's range" in line and "model.torch_dtype: float32" in line
    assert nothing_written(run_config)


@pytest.mark.parametrize("method", ["Wanda", "OWL"])  # the pruning loop, the measuring loop
def test_block_outputs_overflowing_float32_stop_the_run(method, run_config, cli):
    def blow_up(weights):  # finite weights whose product overflows float32 in block 0's MLP
        for name in ("mlp.gate_proj", "mlp.up_proj"):
            weights[f"model.layers.0.{name}.weight"] *= 1e30

    edit_weights(model_path(run_config), blow_up)
    assert all(torch.isfinite(w).all() for w in load_file(model_path(run_config)
                                                          / "model.safetensors").values())
    code, stderr = cli("--config", run_config, "--set", f"sparse.method={method}", *FAST)
    line = error_line(stderr)
    assert code == 2
    assert "block 0 (model.layers.0) gave NaN/inf outputs on the calibration windows" in line
    assert "overflows float32" in line
    assert nothing_written(run_config)


def test_float16_overflow_suggests_float32(run_config, cli):
    def amplify(weights):  # block 1's MLP output far beyond float16's 65504
        for name in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            weights[f"model.layers.1.{name}.weight"] *= 1000

    edit_weights(model_path(run_config), amplify)
    code, stderr = cli("--config", run_config, "--set", "model.torch_dtype=float16", *FAST)
    line = error_line(stderr)
    assert code == 2 and "block 1 (model.layers.1)" in line
    assert "set model.torch_dtype: float32" in line
    assert nothing_written(run_config)


# ---------------------------------------------------------------- N:M and sequence lengths


def test_n_m_on_a_width_m_does_not_divide(run_config, tiny_model_dir, cli, monkeypatch):
    path = tiny_model_dir("llama", seed=1, intermediate_size=66)  # down_proj reads 66 inputs
    monkeypatch.setattr(llmc.pipeline, "load_tokenizer", lambda cfg: pytest.fail("too late"))
    code, stderr = cli("--config", run_config, "--set", f"model.path={path}",
                       "--set", "sparse.weight.sparsity_type=2:4", *FAST)
    line = error_line(stderr)
    assert code == 2
    assert "sparsity_type 2:4: model.layers.0.mlp.down_proj has 66 inputs" in line
    assert "not a multiple of M" in line and "M values that fit this model: 2" in line
    assert nothing_written(run_config)


def test_n_m_with_m_beyond_every_width(run_config, cli):
    code, stderr = cli("--config", run_config, "--set", "sparse.weight.sparsity_type=2:100000",
                       *FAST)
    line = error_line(stderr)
    assert code == 2
    assert "model.layers.0.self_attn.q_proj has only 32 inputs (in_features), fewer than M" in line
    assert nothing_written(run_config)


@pytest.mark.parametrize("arch,type_name", [("llama", "Llama"), ("opt", "OPT")])
def test_calib_seq_len_beyond_the_position_limit(arch, type_name, run_config, tiny_model_dir,
                                                 cli):
    path = tiny_model_dir(arch)  # max_position_embeddings 256
    code, stderr = cli("--config", run_config, "--set", f"model.path={path}",
                       "--set", f"model.type={type_name}", "--set", "calib.seq_len=300", *FAST)
    line = error_line(stderr)
    assert code == 2
    assert "calib.seq_len 300 is longer than the model's position limit" in line
    assert "max_position_embeddings = 256" in line and "at most 256" in line
    assert nothing_written(run_config)


def test_eval_seq_len_is_checked_only_when_eval_runs(run_config, cli):
    code, stderr = cli("--config", run_config, "--set", "eval.seq_len=257",
                       "--set", "eval.eval_pos=[pretrain]")
    assert code == 2 and "eval.seq_len 257" in error_line(stderr)
    assert nothing_written(run_config)
    # Magnitude reads no calibration data and nothing is evaluated: neither length is used.
    code, stderr = cli("--config", run_config, "--set", "eval.seq_len=4096",
                       "--set", "calib.seq_len=4096", "--set", "sparse.method=Magnitude", *FAST)
    assert code == 0, stderr
    assert (save_dir(run_config) / "results.json").exists()


def test_bloom_alibi_has_no_position_limit(run_config, tiny_model_dir, cli):
    path = tiny_model_dir("bloom")
    code, stderr = cli("--config", run_config, "--set", f"model.path={path}",
                       "--set", "model.type=Bloom", "--set", "calib.seq_len=300", *FAST)
    assert code == 0, stderr
    results = json.loads((save_dir(run_config) / "results.json").read_text())
    assert results["config"]["calib"]["seq_len"] == 300


@pytest.mark.parametrize("variant,limited", [("baichuan_7b", True), ("baichuan2_13b", False)])
def test_baichuan_rotary_is_limited_alibi_is_not(variant, limited, tmp_path, tiny_tokenizer):
    path = save_model_dir(arch_model(variant), tiny_tokenizer, tmp_path / f"{variant}_limit")
    cfg = load_config(raw={"model": {"type": "Baichuan", "path": path,
                                     "trust_remote_code": True},
                           "calib": {"name": "wikitext2", "path": str(path), "seq_len": 300},
                           "eval": {"eval_pos": []}, "save": {"save_path": str(tmp_path)}})
    if limited:
        with pytest.raises(LlmcError, match=r"calib.seq_len 300 .* \(model_max_length = 256"):
            preflight(cfg, calibrates=True)
    else:
        assert preflight(cfg, calibrates=True).vocab_size == 300
