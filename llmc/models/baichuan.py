"""Baichuan (baichuan-inc/Baichuan-7B, Baichuan2-7B, Baichuan2-13B): Llama-like blocks with a
fused W_pack (q|k|v in one Linear, pruned as one), RMSNorm, SwiGLU MLP.

Its modeling code ships with the checkpoint (config.json `auto_map`), not with transformers, so
loading it runs that code: llmc does so only with `model.trust_remote_code: True`.
Variants: Baichuan-7B (BaiChuanForCausalLM, rotary, Linear lm_head), Baichuan2-7B (rotary,
NormHead lm_head), Baichuan2-13B (ALiBi mask built by the model and passed to every block as its
attention_mask). Rotary is computed inside each attention, so nothing but the embeddings runs
before block 0. NormHead normalises its weight rows on its first forward in eval mode.
"""
from ..registry import MODELS
from .adapter import Adapter

MODELS.register("Baichuan")(Adapter(
    name="Baichuan",
    model_types=("baichuan",),
    blocks="model.layers",
    pre_blocks=("model.embed_tokens",),
    post_blocks=("model.norm", "lm_head"),
    groups=(
        ("self_attn.W_pack",),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    ),
    trust_remote_code=True,
    # The rotary variants' configs say their length as max_position_embeddings (published 7B
    # checkpoints) or model_max_length; the ALiBi variant (13B) has no rotary module and no limit.
    position_limit=("max_position_embeddings", "model_max_length"),
    position_limit_module="self_attn.rotary_emb",
))
