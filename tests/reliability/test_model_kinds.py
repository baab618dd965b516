"""model.type auto on a checkpoint that is not a decoder-only causal LM: one short line saying
what it is (not the list of every config class transformers has, nor "checkpoint incomplete")."""
import pytest

from conftest import error_line
from test_models import FAST, nothing_written


def _t5():
    from transformers import T5Config, T5ForConditionalGeneration
    return T5ForConditionalGeneration(T5Config(vocab_size=300, d_model=16, d_kv=4, d_ff=32,
                                               num_layers=1, num_heads=2))


def _bert():
    from transformers import BertConfig, BertForMaskedLM
    return BertForMaskedLM(BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32))


@pytest.mark.parametrize("build,model_type,kind", [
    (_t5, "t5", "an encoder-decoder model"),
    (_bert, "bert", "an encoder-only (masked language) model"),
])
def test_a_model_that_is_not_decoder_only_says_what_it_is(
        cli, run_config, tmp_path, tiny_tokenizer, build, model_type, kind):
    directory = tmp_path / model_type
    build().save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    code, stderr = cli("--config", run_config, "--set", f"model.path={directory}",
                       "--set", "model.type=auto", *FAST)
    line = error_line(stderr)
    assert code == 2 and len(line) < 300, line
    assert f"llmc prunes decoder-only causal language models; this is a {model_type}" in line
    assert kind in line and nothing_written(run_config)
