"""Test-only stand-in for the configuration_baichuan.py that Baichuan checkpoints ship.

Same model_type and field names as baichuan-inc's published configs, plus two fields that pick
which published variant the test modeling code mirrors (the real checkpoints ship one modeling
file per variant): `position_encoding` ("rotary": Baichuan-7B / Baichuan2-7B; "alibi":
Baichuan2-13B) and `norm_head` (Baichuan2's NormHead lm_head; Baichuan-7B has a plain Linear).
"""
import os

from transformers import PretrainedConfig

# Test-only: leave a trace whenever this checkpoint code runs, so tests can prove llmc refuses to
# run it without model.trust_remote_code.
if os.environ.get("LLMC_TEST_REMOTE_CODE_MARKER"):
    with open(os.environ["LLMC_TEST_REMOTE_CODE_MARKER"], "a") as marker:
        marker.write(f"{__name__}\n")


class BaichuanConfig(PretrainedConfig):
    model_type = "baichuan"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=125696, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, hidden_act="silu",
                 model_max_length=4096, initializer_range=0.02, rms_norm_eps=1e-6,
                 use_cache=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 tie_word_embeddings=False, z_loss_weight=0.0, position_encoding="rotary",
                 norm_head=True, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.model_max_length = model_max_length
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.z_loss_weight = z_loss_weight
        self.position_encoding = position_encoding
        self.norm_head = norm_head
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings,
                         **kwargs)
