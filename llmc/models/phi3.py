"""Phi-3: q|k|v in one Linear (qkv_proj) and gate|up in one (gate_up_proj), each pruned as one
matrix as it is stored (as BLOOM's query_key_value and Baichuan's W_pack)."""
from ..registry import MODELS
from .adapter import Adapter

MODELS.register("Phi3")(Adapter(
    name="Phi3",
    model_types=("phi3",),
    blocks="model.layers",
    pre_blocks=("model.embed_tokens", "model.rotary_emb"),
    post_blocks=("model.norm", "lm_head"),
    groups=(
        ("self_attn.qkv_proj",),
        ("self_attn.o_proj",),
        ("mlp.gate_up_proj",),
        ("mlp.down_proj",),
    ),
    position_limit=("max_position_embeddings",),
))
