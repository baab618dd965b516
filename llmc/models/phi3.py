"""Phi-3: the Llama table's modules, with q|k|v in one Linear (qkv_proj) and gate|up in one
(gate_up_proj), each pruned as one matrix as it is stored (as BLOOM's query_key_value and
Baichuan's W_pack)."""
import dataclasses

from ..registry import MODELS
from .llama import LLAMA

MODELS.register("Phi3")(dataclasses.replace(
    LLAMA, name="Phi3", model_types=("phi3",),
    groups=(("self_attn.qkv_proj",), ("self_attn.o_proj",), ("mlp.gate_up_proj",),
            ("mlp.down_proj",)),
    widths=None,  # q|k|v and gate|up fused: width pruning would slice inside one Linear
))
