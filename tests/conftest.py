"""Shared fixtures: a tokenizer trained in-test and tiny random models built from configs."""
import json
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import pytest
import torch
import yaml
from loguru import logger

from llmc.registry import MODELS


def _approx_of_plain_numbers(approx):
    """pytest.approx takes numbers, sequences and NumPy arrays; a torch tensor works in some
    pytest releases and not others (9.2 iterates a 0-d tensor and fails). Every approx in the
    suite is given plain numbers (`.item()`, `.tolist()`), or tensors are compared with
    torch.testing.assert_close; this makes a tensor an error on every pytest release."""

    def checked(expected, *args, **kwargs):
        if isinstance(expected, torch.Tensor) or (
                isinstance(expected, (list, tuple, dict)) and any(
                    isinstance(v, torch.Tensor)
                    for v in (expected.values() if isinstance(expected, dict) else expected))):
            raise TypeError("pytest.approx given a torch tensor: compare .item() / .tolist(), "
                            "or use torch.testing.assert_close")
        return approx(expected, *args, **kwargs)

    return checked


pytest.approx = _approx_of_plain_numbers(pytest.approx)

WORDS = ("the of and to in is was for on as with by at from his her an which that they are "
         "river city music film war king model data light water north south year born").split()


def random_text(n_words, seed):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained here on generated text (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([random_text(200, s) for s in range(50)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


CPU = torch.device("cpu")
VOCAB = 300  # the test tokenizer's vocabulary, and every tiny model's


def token_batches(n, length, seed):
    """`n` windows of `length` random token ids, shape (1, length) each, drawn from a generator
    seeded with `seed`: the same ids on every run and CPU (integers)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (1, length), generator=gen) for _ in range(n)]


# ---------------------------------------------------------------- tiny architectures
# ONE table of every tiny model the tests build, keyed by variant name. A row says which adapter
# (MODELS entry, i.e. model.type) describes it, which config model_type it is (a transformers
# one, built with AutoConfig.for_model, or Baichuan's test stand-in remote code), its sizes and
# the preset that makes the variant what it is. The architecture lists the tests parametrise
# over are derived from it, and tests/models/test_registry_coverage.py checks it against MODELS:
# every adapter has a variant, and every model_type an adapter lists is built here or named in
# UNTESTED_MODEL_TYPES with the reason.
#
# Baichuan is not in transformers: its stand-in code lives in tests/models/baichuan_remote/ and
# is loaded the way a checkpoint's remote code is (transformers' dynamic modules).

BAICHUAN_REMOTE = Path(__file__).parent / "models" / "baichuan_remote"
BAICHUAN_FILES = ("configuration_baichuan.py", "modeling_baichuan.py")
BAICHUAN_AUTO_MAP = {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                     "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}


@dataclass(frozen=True)
class TinyArch:
    adapter: str  # its MODELS entry (model.type)
    model_type: str  # its config's model_type (test_registry_coverage checks the built one)
    size: Mapping[str, Any]  # config kwargs that make it tiny (num_hidden_layers: arch_config)
    preset: Mapping[str, Any] = field(default_factory=dict)  # what makes this variant
    remote: bool = False  # config and model from tests/models/baichuan_remote, not transformers


# Sizes per config family (read-only: rows share them).
LLAMA_SIZE = MappingProxyType(dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False))
OPT_SIZE = MappingProxyType(dict(
    vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, ffn_dim=64,
    max_position_embeddings=256))
BLOOM_SIZE = MappingProxyType(dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4))
BAICHUAN_SIZE = MappingProxyType(dict(
    vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, intermediate_size=64,
    model_max_length=256))

GEMMA_SIZE = MappingProxyType(dict(LLAMA_SIZE, head_dim=8))
PHI3_SIZE = MappingProxyType(dict(LLAMA_SIZE, pad_token_id=0, bos_token_id=1, eos_token_id=2))
# Experts: 4 per MoE layer, 2 per token; the first layer dense where the family has such layers.
MOE_SIZE = MappingProxyType(dict(LLAMA_SIZE, head_dim=8, num_experts_per_tok=2,
                                 moe_intermediate_size=16))
SLIDING = 8  # the sliding window of the tiny sliding-window variants: tests use longer windows

# The first variant of each adapter is its representative (ONE_PER_ADAPTER).
TINY_ARCHS = {
    "llama": TinyArch("Llama", "llama", LLAMA_SIZE),
    "mistral": TinyArch("Llama", "mistral", LLAMA_SIZE),  # sliding window 4096 > any test window
    "qwen2": TinyArch("Qwen2", "qwen2", LLAMA_SIZE),
    "opt": TinyArch("OPT", "opt", OPT_SIZE),
    # as opt-350m: narrower word embeddings (project_in/out), layer norm after attention
    "opt_350m": TinyArch("OPT", "opt", OPT_SIZE,
                         dict(word_embed_proj_dim=16, do_layer_norm_before=False)),
    "bloom": TinyArch("Bloom", "bloom", BLOOM_SIZE),
    # the published Baichuan checkpoints' differences that matter to llmc
    "baichuan2_7b": TinyArch("Baichuan", "baichuan", BAICHUAN_SIZE,
                             dict(position_encoding="rotary", norm_head=True), remote=True),
    "baichuan2_13b": TinyArch("Baichuan", "baichuan", BAICHUAN_SIZE,
                              dict(position_encoding="alibi", norm_head=True), remote=True),
    "baichuan_7b": TinyArch("Baichuan", "baichuan", BAICHUAN_SIZE,
                            dict(position_encoding="rotary", norm_head=False), remote=True),
    "mistral_sliding": TinyArch("Mistral", "mistral", LLAMA_SIZE, dict(sliding_window=SLIDING)),
    # layer 0 global, the others sliding-window (max_window_layers)
    "qwen3": TinyArch("Qwen3", "qwen3", GEMMA_SIZE, dict(use_sliding_window=True,
                                                         sliding_window=SLIDING,
                                                         max_window_layers=1)),
    # sliding and global layers alternate; a small soft cap, so that leaving it out shows
    "gemma2": TinyArch("Gemma2", "gemma2", GEMMA_SIZE, dict(sliding_window=SLIDING,
                                                            final_logit_softcapping=2.0)),
    "gemma3": TinyArch("Gemma3", "gemma3_text", GEMMA_SIZE,
                       dict(sliding_window=SLIDING, sliding_window_pattern=2,
                            final_logit_softcapping=2.0)),
    "phi3": TinyArch("Phi3", "phi3", PHI3_SIZE, dict(sliding_window=SLIDING)),
    "mixtral": TinyArch("Mixtral", "mixtral", LLAMA_SIZE,
                        dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=16)),
    "qwen2_moe": TinyArch("Qwen2Moe", "qwen2_moe", MOE_SIZE,
                          dict(num_experts=4, shared_expert_intermediate_size=32,
                               mlp_only_layers=[0])),
    "qwen3_moe": TinyArch("Qwen3Moe", "qwen3_moe", MOE_SIZE,
                          dict(num_experts=4, mlp_only_layers=[0])),
    # multi-head latent attention (q through q_a/q_b), a shared expert, layer 0 dense
    "deepseek_v3": TinyArch("DeepseekV3", "deepseek_v3", MOE_SIZE,
                            dict(n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1,
                                 q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4, head_dim=4,
                                 num_key_value_heads=4,
                                 qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1)),
}
# model_type an adapter lists -> why no variant above builds it (none today).
UNTESTED_MODEL_TYPES = {}

ARCHS = tuple(TINY_ARCHS)  # every variant


def _first_variant_of_each_adapter():
    first = {}
    for name, row in TINY_ARCHS.items():
        first.setdefault(row.adapter, name)
    return tuple(first.values())


ONE_PER_ADAPTER = _first_variant_of_each_adapter()  # llama, qwen2, opt, bloom, baichuan2_7b


def tiny_arch(arch) -> TinyArch:
    """The table's row for variant `arch`; an unknown name is a ValueError naming the known ones."""
    try:
        return TINY_ARCHS[arch]
    except (KeyError, TypeError):
        raise ValueError(f"unknown tiny architecture {arch!r}; known: "
                         f"{', '.join(TINY_ARCHS)}") from None


def arch_adapter(arch):
    """The registered adapter of variant `arch`."""
    return MODELS[tiny_arch(arch).adapter]


def baichuan_class(name):
    """A class from the test Baichuan code, imported as transformers imports remote code."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    module = "configuration_baichuan" if name.endswith("Config") else "modeling_baichuan"
    return get_class_from_dynamic_module(f"{module}.{name}", str(BAICHUAN_REMOTE))


def arch_config(arch, layers=2, **overrides):
    """The config of a tiny `layers`-block model of variant `arch` (a key of TINY_ARCHS);
    `overrides` (num_hidden_layers among them) win over its size and preset."""
    row = tiny_arch(arch)
    kwargs = {**row.size, "num_hidden_layers": layers, **row.preset, **overrides}
    if row.remote:
        return baichuan_class("BaichuanConfig")(**kwargs)
    from transformers import AutoConfig

    return AutoConfig.for_model(row.model_type, **kwargs)


def arch_model(arch, seed=0, layers=2, **overrides):
    """A tiny random model of `arch` in eval mode, with eager attention where there is a choice."""
    from transformers import AutoModelForCausalLM

    config = arch_config(arch, layers, **overrides)
    torch.manual_seed(seed)
    if tiny_arch(arch).remote:
        return baichuan_class("BaichuanForCausalLM")(config).eval()
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def tiny_model(arch, seed=0, **overrides):
    """arch_model with the block count given as num_hidden_layers (2 unless overridden)."""
    return arch_model(arch, seed, **overrides)


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    """Factory: save a tiny model of variant `arch` + the test tokenizer; return the directory."""

    def make(arch="llama", seed=0, **overrides):
        path = tmp_path / f"{arch}-{seed}"
        tiny_model(arch, seed, **overrides).save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
        return str(path)

    return make


@pytest.fixture
def run_config(tmp_path, tiny_model_dir):
    """A complete config on a tiny Llama with local calibration / evaluation files."""
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": random_text(300, s)}) + "\n" for s in range(4)))
    evaluation = tmp_path / "wikitext2.jsonl"
    evaluation.write_text("".join(json.dumps({"text": random_text(80, 100 + s)}) + "\n"
                                  for s in range(6)))
    config = {
        "base": {"seed": 0, "device": "cpu"},
        "model": {"type": "Llama", "path": tiny_model_dir("llama", num_hidden_layers=2)},
        "calib": {"name": "wikitext2", "path": str(calib), "n_samples": 6, "seq_len": 32,
                  "preproc": "wikitext2_gptq"},
        "eval": {"name": "wikitext2", "path": str(evaluation), "seq_len": 32},
        "sparse": {"method": "Wanda", "weight": {"sparsity": 0.5}},
        "save": {"save_trans": True, "save_path": str(tmp_path / "save")},
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def save_model_dir(model, tokenizer, path):
    """`model` and the test tokenizer as a Hugging Face directory; a Baichuan one carries its
    modeling code and config.json auto_map, as the published checkpoints do."""
    path = Path(path)
    if model.config.model_type == "baichuan":
        model.config.auto_map = dict(BAICHUAN_AUTO_MAP)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if model.config.model_type == "baichuan":
        for name in BAICHUAN_FILES:
            shutil.copy(BAICHUAN_REMOTE / name, path / name)
    return str(path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one intra-op thread: tiny models gain nothing from more, and
    while other work keeps the cores busy, OpenMP's waiting threads slow each forward ~100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def error_line(stderr: str) -> str:
    """The one `llmc: error:` line of a failed run; fails the test on a traceback or on any
    other count of error lines."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("llmc: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> (exit code, stderr) of `python -m llmc *argv`, run in this process."""
    from llmc.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        # main() logs to the sys.stderr it found, which is capsys's and closes with this test:
        # log on to whatever sys.stderr is when a message comes.
        logger.remove()
        logger.add(lambda message: sys.stderr.write(message), level="INFO")
        return code, capsys.readouterr().err

    return run
