"""save.format: compressed-tensors: a SparseGPT/MixGPT wbits run saved packed. Loaded back through
transformers + compressed-tensors, the dequantized weights equal the run's (the same run saved
as float weights) bit for bit, and so do the logits; the packing itself on a hand-made grid; the
settings it cannot honour are one error each."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

import llmc
from conftest import error_line, token_batches, tiny_model
from llmc.errors import LlmcError
from llmc.packed import packed_tensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dequantized(directory):
    return AutoModelForCausalLM.from_pretrained(
        directory, quantization_config=CompressedTensorsConfig(dequantize=True),
        attn_implementation="eager")


def saved_runs(cli, run_config, tmp_path, *settings):
    """(float directory, packed directory) of the same run saved both ways."""
    dirs = []
    for fmt in ("hf", "compressed-tensors"):
        save = tmp_path / fmt
        code, err = cli("--config", run_config, "--set", f"save.save_path={save}",
                        "--set", f"save.format={fmt}", *settings)
        assert code == 0, err
        dirs.append(save)
    return dirs


@pytest.mark.parametrize("settings", [
    ("--set", "sparse.method=SparseGPT", "--set", "sparse.wbits=4", "--set", "sparse.blocksize=16"),
    ("--set", "sparse.method=OWL", "--set", "sparse.base=SparseGPT", "--set", "sparse.wbits=3",
     "--set", "sparse.blocksize=16", "--set", "sparse.weight.sparsity_type=2:4",
     "--set", "sparse.owl.lambda=0"),
    # a block removed first: the grids are the smaller model's (llmc.structure)
    ("--set", "sparse.structure=ShortGPT", "--set", "sparse.depth.remove=1",
     "--set", "sparse.method=SparseGPT", "--set", "sparse.wbits=4", "--set", "sparse.blocksize=16"),
], ids=["sparsegpt-4bit", "owl-sparsegpt-3bit-2:4", "shortgpt-sparsegpt-4bit"])
def test_the_packed_model_dequantizes_to_the_runs_weights_bit_for_bit(cli, run_config, tmp_path,
                                                                       settings):
    plain, packed = saved_runs(cli, run_config, tmp_path, *settings)
    floats = AutoModelForCausalLM.from_pretrained(plain / "transformed_model",
                                                  attn_implementation="eager")
    loaded = dequantized(packed / "transformed_model")
    state = loaded.state_dict()
    for name, tensor in floats.state_dict().items():
        assert torch.equal(state[name], tensor), name
    ids = torch.cat(token_batches(2, 16, 4))
    assert torch.equal(loaded(ids).logits, floats(ids).logits)

    stored = load_file(packed / "transformed_model" / "model.safetensors")
    q_proj = "model.layers.0.self_attn.q_proj"
    assert f"{q_proj}.weight" not in stored
    assert stored[f"{q_proj}.weight_packed"].dtype == torch.int32
    assert "lm_head.weight" in stored  # the head stays float
    config = json.loads((packed / "transformed_model" / "config.json").read_text())
    quantization = config["quantization_config"]
    assert quantization["quant_method"] == "compressed-tensors"
    assert quantization["format"] == "pack-quantized"
    weights = quantization["config_groups"]["group_0"]["weights"]
    bits = 4 if "sparse.wbits=4" in settings else 3
    assert (weights["num_bits"], weights["strategy"], weights["symmetric"]) == (
        bits, "channel", False)
    results = json.loads((packed / "results.json").read_text())
    assert results["saved_format"]["linears"] == 7 * config["num_hidden_layers"]
    assert results["saved_format"]["bits"] == bits
    assert config["num_hidden_layers"] == (1 if "sparse.structure=ShortGPT" in settings else 2)
    assert results["saved_format"]["weight_bytes"] < results["saved_format"]["weight_bytes_before"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_given_to_prune_packs_exactly(dtype, tmp_path, tiny_tokenizer):
    ids = torch.cat(token_batches(4, 16, 1))
    results = {}
    for fmt in ("hf", "compressed-tensors"):
        config = {"sparse": {"method": "SparseGPT", "wbits": 4, "blocksize": 16},
                  "calib": {"seq_len": 16},
                  "save": {"save_trans": True, "save_path": str(tmp_path / fmt), "format": fmt}}
        model = tiny_model("llama", seed=1).to(dtype)
        results[fmt] = llmc.prune(model, tiny_tokenizer, config, calibration=ids)
    loaded = AutoModelForCausalLM.from_pretrained(
        results["compressed-tensors"].saved_model, dtype=dtype,
        quantization_config=CompressedTensorsConfig(dequantize=True))
    for name, tensor in results["hf"].model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert results["compressed-tensors"].record["saved_format"]["bits"] == 4


@pytest.mark.parametrize("structure", [
    (), ("--set", "sparse.structure=ShortGPT", "--set", "sparse.depth.remove=1"),
    ("--set", "sparse.structure=Width", "--set", "sparse.width.heads=1",
     "--set", "sparse.width.channels=16")], ids=["dense", "shortgpt", "width"])
def test_a_streamed_run_packs_the_same_files_as_one_in_memory(cli, run_config, tmp_path,
                                                              structure):
    """The grids of a streamed run come from the dense weights of the model it prunes: the
    checkpoint's, or the smaller model's once a structured pass has made it."""
    files = {}
    for load in ("memory", "stream"):
        save = tmp_path / load
        code, err = cli("--config", run_config, *structure, "--set", f"save.save_path={save}",
                        "--set", "save.format=compressed-tensors", "--set", f"model.load={load}",
                        "--set", "sparse.method=SparseGPT", "--set", "sparse.wbits=4",
                        "--set", "sparse.blocksize=16", "--set", "eval.eval_pos=[]")
        assert code == 0, err
        model_dir = save / "transformed_model"
        files[load] = {}
        for file in sorted(model_dir.glob("*.safetensors")):
            files[load].update(load_file(file))
        config = json.loads((model_dir / "config.json").read_text())
        files[load]["targets"] = config["quantization_config"]["config_groups"]["group_0"][
            "targets"]
    assert files["stream"].keys() == files["memory"].keys()
    for name, tensor in files["memory"].items():
        other = files["stream"][name]
        assert (other == tensor) if name == "targets" else torch.equal(other, tensor), name


def test_packing_a_hand_made_grid():
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    scale = torch.tensor([[0.5], [0.25]])
    zero = torch.tensor([[8.0], [3.0]])
    q = torch.arange(64).reshape(2, 32) % 16
    weight = scale * (q - zero)
    tensors = packed_tensors(weight, (scale, zero), 4, "w")
    assert tensors["weight_packed"].shape == (2, 4)  # 32 values of 4 bits in 4 int32 words
    assert torch.equal(unpack_from_int32(tensors["weight_packed"], 4, torch.Size([2, 32])),
                       (q - 8).to(torch.int8))
    assert torch.equal(unpack_from_int32(tensors["weight_zero_point"], 4, torch.Size([2, 1]),
                                         packed_dim=0), torch.tensor([[0], [-5]], dtype=torch.int8))
    assert torch.equal(tensors["weight_shape"], torch.tensor([2, 32]))
    off = weight.clone()
    off[1, 5] += 0.01
    with pytest.raises(LlmcError, match="w: 1 weight\\(s\\) are not on the 4-bit grid"):
        packed_tensors(off, (scale, zero), 4, "w")


@pytest.mark.parametrize("settings, message", [
    ({"sparse.method": "Wanda"}, "this run \\(Wanda\\) quantizes nothing: set sparse.wbits"),
    ({"sparse.method": "SparseGPT"}, "quantizes nothing"),
    ({"sparse.method": "SparseGPT", "sparse.wbits": 4, "save.save_trans": False},
     "save.save_trans is off"),
    ({"save.format": "gguf"}, "save.format 'gguf' must be one of hf, compressed-tensors"),
])
def test_what_the_format_cannot_hold_is_one_error(settings, message, run_config, cli):
    argv = ["--config", run_config, "--set", "save.format=compressed-tensors"]
    for key, value in settings.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    code, err = cli(*argv)
    assert code == 2 and re.search(message, err), err
    assert not (Path(run_config).parent / "save").exists()


def test_bench_model_reads_a_packed_model_as_its_dequantized_weights(cli, run_config, tmp_path,
                                                                     capsys):
    plain, packed = saved_runs(cli, run_config, tmp_path, "--set", "sparse.method=SparseGPT",
                               "--set", "sparse.wbits=4", "--set", "sparse.blocksize=16")
    out = tmp_path / "bench.json"
    code, err = cli("bench-model", plain / "transformed_model", packed / "transformed_model",
                    "--prompt", "8", "--new-tokens", "2", "--batch", "1", "--repeats", "1",
                    "--device", "cpu", "--json", out)
    assert code == 0, err
    first, second = json.loads(out.read_text())["models"]
    assert second["nonzero_parameters"] == first["nonzero_parameters"]  # the same weights
    assert second["checkpoint_bytes"] < first["checkpoint_bytes"]


def test_moe_experts_are_refused_before_any_work(cli, run_config, tiny_model_dir):
    """llmc's asymmetric expert grids do not load back in transformers yet
    (huggingface/transformers#47430), so a packed MoE save is refused, and nothing is written."""
    argv = ["--config", run_config, "--set", "save.format=compressed-tensors",
            "--set", "model.type=Qwen3Moe", "--set", f"model.path={tiny_model_dir('qwen3_moe')}",
            "--set", "sparse.method=SparseGPT", "--set", "sparse.wbits=4"]
    code, err = cli(*argv)
    assert code == 2 and "llmc does not pack MoE experts" in error_line(err), err
    assert not (Path(run_config).parent / "save").exists()
