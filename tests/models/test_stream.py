"""The streamed engine (llmc/models/stream.py) against the in-memory one: for every adapter and
every method, a run that reads each part from disk only while used and writes each block as it
finishes gives bit-identical weights, perplexities and a directory plain transformers loads.

Both engines run the same operations in the same order on the same bytes (the streamed one
converts each tensor to the model's dtype as from_pretrained does), in one process, so the
comparisons are bitwise."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import (ONE_PER_ADAPTER, TINY_ARCHS, arch_adapter, arch_model, error_line,
                      save_model_dir)
from streamed_runs import (assert_same_weights, count_held_parameters, run_both,  # noqa: F401
                           stream_config)
from llmc.registry import METHODS

# every registered method that prunes weights (`none` prunes none: tests/sparse/test_none.py)
PRUNING_METHODS = sorted(name for name in METHODS if METHODS[name].PRUNES)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Every dense adapter with every method, and one MoE family (Qwen2-MoE: a dense layer, a
# shared expert and routed ones) with every method; the other MoE families:
# tests/models/test_stream_moe.py.
STREAMABLE = [arch for arch in ONE_PER_ADAPTER if not arch_adapter(arch).experts] + ["qwen2_moe"]


@pytest.mark.parametrize("arch", STREAMABLE)
@pytest.mark.parametrize("method", PRUNING_METHODS)
def test_streamed_run_equals_in_memory_run(cli, stream_config, arch, method):
    sparse = {"mixgpt": {"sensitivity": {"max_iter": 2}}} \
        if method == "MixGPT" else None
    both = run_both(cli, stream_config, arch, method, sparse=sparse,
                    eval_cfg={"eval_pos": ["transformed"]})
    (memory, memory_weights, _), (stream, stream_weights, stream_path) = both["memory"], \
        both["stream"]
    assert memory["engine"]["load"] == "memory" and stream["engine"]["load"] == "stream"
    assert_same_weights(memory_weights, stream_weights)
    assert memory["ppl"] == stream["ppl"]
    assert memory["sparsity"] == stream["sparsity"]
    assert memory.get("plan") == stream.get("plan")
    assert not (stream_path / ".llmc" / "scratch" / "shards").exists()


# Every other variant (the representatives above cover each adapter with every method), with
# both propagation modes and both eval positions, per block and whole.
VARIANTS = [arch for arch in TINY_ARCHS if arch not in ONE_PER_ADAPTER
            and not arch_adapter(arch).experts]


@pytest.mark.parametrize("arch", VARIANTS)
def test_every_variant_streams_to_the_same_weights(cli, stream_config, arch):
    both = run_both(cli, stream_config, arch, "SparseGPT", sparse={"sparsity_out": True},
                    eval_cfg={"eval_pos": ["pretrain", "transformed"],
                              "inference_per_block": True})
    assert_same_weights(both["memory"][1], both["stream"][1])
    assert both["memory"][0]["ppl"] == both["stream"][0]["ppl"]


@pytest.mark.parametrize("per_block", [False, True])
def test_streamed_eval_is_the_in_memory_eval(cli, stream_config, per_block):
    both = run_both(cli, stream_config, "llama", "Wanda", sparse={"sparsity_out": True},
                    eval_cfg={"eval_pos": ["pretrain", "transformed"],
                              "inference_per_block": per_block})
    memory, stream = both["memory"][0], both["stream"][0]
    assert set(memory["ppl"]) == {"pretrain", "transformed"}
    assert memory["ppl"] == stream["ppl"]
    assert_same_weights(both["memory"][1], both["stream"][1])


@pytest.mark.parametrize("arch", ["llama", "opt", "baichuan2_13b"])
def test_streamed_output_is_a_sharded_directory_transformers_loads(cli, stream_config, arch):
    """The index names one shard per part (embeddings, each block, final norm and head), and
    from_pretrained gives the logits of the in-memory run's saved model."""
    from transformers import AutoModelForCausalLM

    both = run_both(cli, stream_config, arch, "Wanda", eval_cfg={"eval_pos": []})
    directory = both["stream"][2] / "transformed_model"
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == sorted(p.name for p in directory.glob("*.safetensors"))
    assert len(files) == 2 + 2  # pre-block modules, 2 blocks, post-block modules
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in both["stream"][1].values())
    remote = TINY_ARCHS[arch].remote
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(4))
    logits = []
    for load in ("memory", "stream"):
        model = AutoModelForCausalLM.from_pretrained(
            both[load][2] / "transformed_model", trust_remote_code=remote).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("method", ["Wanda", "SparseGPT", "OWL", "MixGPT"])
def test_a_streamed_run_holds_one_part_at_a_time(cli, stream_config, monkeypatch, method):
    """Counted in parameters, not RSS: the most ever materialised at once is the largest single
    part (the embeddings, one block, or the final norm and head), through capture, the OWL
    measuring pass, MixGPT's loss Hessian (block by block), pruning, the report, the per-block
    evals (perplexity and cloze) and the save."""
    held, parts = count_held_parameters(monkeypatch)
    sparse = {"mixgpt": {"sensitivity": {"max_iter": 2}}} if method == "MixGPT" else None
    path = stream_config("opt", method, "stream", sparse=sparse,
                         eval_cfg={"eval_pos": ["pretrain", "transformed"],
                                   "inference_per_block": True,
                                   "tasks": ["cloze"], "cloze_paragraphs": 4})
    code, stderr = cli("--config", path)
    assert code == 0, stderr
    assert held["now"] == 0  # everything released at the end
    blocks = [size for part, size in parts.items() if part.startswith("block")]
    # OPT ties its head to the embeddings: the post-block part holds both norm and head.
    largest = max(parts["pre"], max(blocks), parts["post"] + parts["pre"])
    assert max(blocks) < held["peak"] <= largest


def test_whole_model_eval_falls_back_to_blocks_when_the_model_does_not_fit(
        cli, stream_config, monkeypatch):
    import llmc.stages

    whole = stream_config("llama", "Magnitude", "stream", eval_cfg={"eval_pos": ["pretrain"]},
                          name="whole")
    code, whole_log = cli("--config", whole)
    assert code == 0 and "evaluating block by block" not in whole_log
    monkeypatch.setattr(llmc.stages, "free_memory", lambda device: 1000)
    small = stream_config("llama", "Magnitude", "stream", eval_cfg={"eval_pos": ["pretrain"]},
                          name="small")
    code, small_log = cli("--config", small)
    assert code == 0 and "evaluating block by block: the whole model" in small_log
    read = [json.loads((tmp / "results.json").read_text())["ppl"]["pretrain"]["wikitext2"]
            for tmp in (Path(yaml.safe_load(p.read_text())["save"]["save_path"])
                        for p in (whole, small))]
    assert read[0] == pytest.approx(read[1], rel=1e-5)  # whole and per-block forwards differ


def _rewrite_checkpoint(directory, rename=None, max_shard_size=None):
    """Re-save a checkpoint's tensors: in several shards, or under other names."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if max_shard_size:
        model = AutoModelForCausalLM.from_pretrained(directory)
        (directory / "model.safetensors").unlink()
        model.save_pretrained(directory, max_shard_size=max_shard_size)
        return sorted(p.name for p in directory.glob("*.safetensors"))
    from safetensors.torch import save_file

    tensors = load_file(directory / "model.safetensors")
    save_file({rename(k): v.contiguous() for k, v in tensors.items()},
              directory / "model.safetensors", metadata={"format": "pt"})
    return sorted(tensors)


def test_a_sharded_checkpoint_streams(cli, stream_config):
    stream_config("llama", "Wanda", "memory")  # builds the model directory
    directory = Path(yaml.safe_load(stream_config("llama", "Wanda", "memory").read_text())
                     ["model"]["path"])
    assert len(_rewrite_checkpoint(directory, max_shard_size="20KB")) > 3
    both = run_both(cli, stream_config, "llama", "SparseGPT", eval_cfg={"eval_pos": []})
    assert both["stream"][0]["engine"]["load"] == "stream"
    assert_same_weights(both["memory"][1], both["stream"][1])


def test_a_checkpoint_without_the_base_model_prefix_streams(cli, stream_config):
    """Published BLOOM checkpoints name tensors `h.0...`, not `transformer.h.0...`: both
    engines map them the same way."""
    directory = Path(yaml.safe_load(stream_config("bloom", "Wanda", "memory").read_text())
                     ["model"]["path"])
    names = _rewrite_checkpoint(directory, rename=lambda k: k.removeprefix("transformer."))
    assert any(name.startswith("transformer.") for name in names)
    both = run_both(cli, stream_config, "bloom", "Wanda", eval_cfg={"eval_pos": []})
    assert both["stream"][0]["engine"]["load"] == "stream"
    assert_same_weights(both["memory"][1], both["stream"][1])


def test_a_bin_checkpoint_is_loaded_into_memory_under_auto_and_refused_under_stream(
        cli, stream_config):
    from transformers import AutoModelForCausalLM

    directory = Path(yaml.safe_load(stream_config("llama", "Wanda", "auto").read_text())
                     ["model"]["path"])
    model = AutoModelForCausalLM.from_pretrained(directory)
    (directory / "model.safetensors").unlink()
    torch.save(model.state_dict(), directory / "pytorch_model.bin")  # transformers 5 writes none
    code, stderr = cli("--config", stream_config("llama", "Wanda", "auto", name="auto"))
    assert code == 0, stderr
    assert "loading the whole model into memory: its weights are not safetensors" in stderr
    code, stderr = cli("--config", stream_config("llama", "Wanda", "stream", name="stream"))
    assert code == 2 and "model.load is stream" in error_line(stderr)


def test_a_checkpoint_with_names_the_model_lacks_goes_to_transformers_under_auto(
        cli, stream_config):
    """Names a streamed model cannot map (transformers' own conversions on loading that no
    adapter's checkpoint_names says) make auto load through from_pretrained, saying why, and
    stream refuse with the fix. Here the name maps nowhere, so from_pretrained then stops the
    run too."""
    directory = Path(yaml.safe_load(stream_config("opt", "Wanda", "auto").read_text())
                     ["model"]["path"])
    _rewrite_checkpoint(directory, rename=lambda k: k.replace("decoder.final_layer_norm.weight",
                                                              "decoder.final_layer_norm.w"))
    code, stderr = cli("--config", stream_config("opt", "Wanda", "auto", name="auto"))
    assert "loading the whole model into memory: the checkpoint has no tensor named" in stderr
    assert code == 2 and "the weights lack 1 tensor(s)" in error_line(stderr)
    code, stderr = cli("--config", stream_config("opt", "Wanda", "stream", name="stream"))
    line = error_line(stderr)
    assert code == 2 and "set model.load: auto or memory" in line


def test_a_failed_read_releases_what_the_part_had_read(tmp_path, tiny_tokenizer, monkeypatch):
    from llmc.config import ModelCfg
    from llmc.models import load_streamed
    from llmc.models import stream
    from llmc.models.weight_files import find_weight_files

    directory = save_model_dir(arch_model("llama", seed=1), tiny_tokenizer, tmp_path / "m")
    handle = load_streamed(ModelCfg(path=directory), find_weight_files(Path(directory), "m").files,
                           tmp_path / "shards")
    calls, read = [0], stream.read_tensor

    def failing_read(entry):
        calls[0] += 1
        if calls[0] == 3:
            raise OSError("disk gone")
        return read(entry)

    monkeypatch.setattr(stream, "read_tensor", failing_read)
    with pytest.raises(OSError, match="disk gone"):
        with handle.block_on(0, "cpu"):
            pass
    assert handle._held == {} and handle._stamps == {}
    assert all(p.is_meta for p in handle.model.parameters())
    monkeypatch.undo()
    with handle.block_on(0, "cpu") as block:  # and the part is read whole next time
        assert not any(p.is_meta for p in block.parameters())
    assert all(p.is_meta for p in handle.model.parameters())


def test_auto_holds_a_model_that_fits_the_free_ram_and_streams_one_that_does_not(
        cli, stream_config, monkeypatch):
    import llmc.models.loading as loading

    code, stderr = cli("--config", stream_config("llama", "Wanda", "auto", name="fits"))
    assert code == 0 and "fits in 1/4 of the free RAM" in stderr
    monkeypatch.setattr(loading, "available_ram", lambda: 4 * 10_000)  # < 4x the tiny model
    path = stream_config("llama", "Wanda", "auto", name="does-not-fit")
    code, stderr = cli("--config", path)
    assert code == 0 and "streaming LlamaForCausalLM" in stderr
    results = json.loads((Path(yaml.safe_load(path.read_text())["save"]["save_path"])
                          / "results.json").read_text())
    assert results["engine"] == {"load": "stream", "why": "model.load: auto", "ranks": 1}
