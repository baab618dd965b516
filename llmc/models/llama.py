"""Llama (and Llama-architecture models such as SmolLM2, Mistral-style checkpoints)."""
from ..registry import MODELS
from .adapter import Adapter, Widths

LLAMA = MODELS.register("Llama")(Adapter(
    name="Llama",
    model_types=("llama", "mistral"),
    blocks="model.layers",
    pre_blocks=("model.embed_tokens", "model.rotary_emb"),
    post_blocks=("model.norm", "lm_head"),
    groups=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
    position_limit=("max_position_embeddings",),  # rotary: trained up to this length
    widths=Widths(
        channels="intermediate_size", channel_in=("mlp.gate_proj", "mlp.up_proj"),
        channel_out="mlp.down_proj", channel_bias="mlp_bias",
        heads=("num_attention_heads", "num_key_value_heads", "head_dim"),
        queries=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attention_out="self_attn.o_proj", attention_bias="attention_bias"),
))
