"""Phi-3: the Llama table's modules, with q|k|v in one Linear (qkv_proj) and gate|up in one
(gate_up_proj), each pruned as one matrix as it is stored (as BLOOM's query_key_value and
Baichuan's W_pack); its config has no bias keys (the Linears have none)."""
import dataclasses

from ..registry import MODELS
from .llama import LLAMA

MODELS.register("Phi3")(dataclasses.replace(
    LLAMA, name="Phi3", model_types=("phi3",),
    groups=(("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",),
            ("mlp.down_proj",)),
    # q|k|v and gate|up fused: width pruning slices each part's rows inside the one Linear
    widths=dataclasses.replace(
        LLAMA.widths, channel_in=("mlp.gate_up_proj",), channel_stack=2, channel_bias="",
        queries=("self_attn.qkv_proj",), attention_bias="",
        kv_head_attributes=("self_attn.num_key_value_heads",)),
))
