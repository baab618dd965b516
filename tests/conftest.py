"""Shared fixtures: a tokenizer trained in-test and tiny random models built from configs."""
import json
import random

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
