"""Shared fixtures: a tokenizer trained in-test and tiny random models built from configs."""
import json
import random
import shutil
from pathlib import Path

import pytest

import llmc.models  # noqa: F401  (fill the registries)
import llmc.sparse  # noqa: F401
import llmc.data  # noqa: F401
import torch
import yaml

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


def tiny_config(model_type, vocab_size=300, **overrides):
    """A transformers config for a 2-layer model small enough for unit tests."""
    from transformers import AutoConfig

    kwargs = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, tie_word_embeddings=False)
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type, seed=0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides),
                                             attn_implementation="eager")
    return model.eval()


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    """Factory: save a tiny model of `model_type` + the test tokenizer; return the directory."""

    def make(model_type="llama", seed=0, **overrides):
        path = tmp_path / f"{model_type}-{seed}"
        tiny_model(model_type, seed, **overrides).save_pretrained(path)
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


# ---------------------------------------------------------------- more architectures
# Tiny OPT, BLOOM and Baichuan models, and one factory over every architecture llmc supports.
# Baichuan is not in transformers: its test stand-in code lives in tests/models/baichuan_remote/
# and is loaded the way a checkpoint's remote code is (transformers' dynamic modules).

BAICHUAN_REMOTE = Path(__file__).parent / "models" / "baichuan_remote"
BAICHUAN_FILES = ("configuration_baichuan.py", "modeling_baichuan.py")
BAICHUAN_AUTO_MAP = {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                     "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}
BAICHUAN_VARIANTS = {  # the published checkpoints' differences that matter to llmc
    "baichuan2_7b": dict(position_encoding="rotary", norm_head=True),
    "baichuan2_13b": dict(position_encoding="alibi", norm_head=True),
    "baichuan_7b": dict(position_encoding="rotary", norm_head=False),
}

# architecture name -> (model.type, transformers model_type or Baichuan variant, config overrides)
ARCHITECTURES = {
    "llama": ("Llama", "llama", {}),
    "qwen2": ("Qwen2", "qwen2", {}),
    "opt": ("OPT", "opt", {}),
    # as opt-350m: narrower word embeddings (project_in/out), layer norm after attention
    "opt_350m": ("OPT", "opt", dict(word_embed_proj_dim=16, do_layer_norm_before=False)),
    "bloom": ("Bloom", "bloom", {}),
    "baichuan2_7b": ("Baichuan", "baichuan2_7b", {}),
    "baichuan2_13b": ("Baichuan", "baichuan2_13b", {}),
    "baichuan_7b": ("Baichuan", "baichuan_7b", {}),
}
FIVE_ARCHITECTURES = ("llama", "qwen2", "opt", "bloom", "baichuan2_7b")


def baichuan_class(name):
    """A class from the test Baichuan code, imported as transformers imports remote code."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    module = "configuration_baichuan" if name.endswith("Config") else "modeling_baichuan"
    return get_class_from_dynamic_module(f"{module}.{name}", str(BAICHUAN_REMOTE))


def arch_config(arch, layers=2, **overrides):
    """A transformers config of a tiny model of architecture `arch` (a key of ARCHITECTURES)."""
    _, kind, preset = ARCHITECTURES[arch]
    overrides = {**preset, **overrides}
    if kind in ("llama", "qwen2"):
        return tiny_config(kind, num_hidden_layers=layers, **overrides)
    from transformers import AutoConfig

    if kind == "opt":
        kwargs = dict(ffn_dim=64, max_position_embeddings=256)
    elif kind == "bloom":
        kwargs = {}
    else:
        kwargs = dict(intermediate_size=64, model_max_length=256, **BAICHUAN_VARIANTS[kind])
    kwargs.update(vocab_size=300, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4)
    kwargs.update(overrides)
    if kind in ("opt", "bloom"):
        return AutoConfig.for_model(kind, **kwargs)
    return baichuan_class("BaichuanConfig")(**kwargs)


def arch_model(arch, seed=0, layers=2, **overrides):
    """A tiny random model of `arch` in eval mode, with eager attention where there is a choice."""
    from transformers import AutoModelForCausalLM

    config = arch_config(arch, layers, **overrides)
    torch.manual_seed(seed)
    if ARCHITECTURES[arch][0] == "Baichuan":
        return baichuan_class("BaichuanForCausalLM")(config).eval()
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


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
