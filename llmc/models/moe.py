"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3.

Their experts are fused 3-D tensors in transformers 5 (`mlp.experts`), presented as one
ExpertMLP of Linears per expert (llmc.models.experts), so `mlp.experts.*.gate_proj` is one input
group per expert, gathered only from the tokens the router sends to it. Routers are left dense:
in transformers 5 they are no Linear (a weight the router module multiplies itself), and the
Linear gates that exist (Qwen2-MoE's shared_expert_gate, transformers 4's `gate`) are listed as
`dense`. Blocks differ: Qwen-MoE's `mlp_only_layers` (and a `decoder_sparse_step` > 1) and
DeepSeek's first `first_k_dense_replace` layers have a dense MLP instead, whose group is the
Llama one; a table lists both and each block uses the groups it has."""
from ..registry import MODELS
from .adapter import Adapter

ATTENTION = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
)
DENSE_MLP = (
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
EXPERTS = (
    ("mlp.experts.*.gate_proj", "mlp.experts.*.up_proj"),
    ("mlp.experts.*.down_proj",),
)
COMMON = dict(
    blocks="model.layers",
    pre_blocks=("model.embed_tokens", "model.rotary_emb"),
    post_blocks=("model.norm", "lm_head"),
    position_limit=("max_position_embeddings",),
    experts=("mlp.experts",),
)

# The published checkpoints (and transformers 5's save_pretrained) name the MoE block
# block_sparse_moe and an expert's matrices w1 (gate), w3 (up), w2 (down).
MODELS.register("Mixtral")(Adapter(
    name="Mixtral", model_types=("mixtral",), groups=ATTENTION + EXPERTS,
    checkpoint_names=((".mlp.", ".block_sparse_moe."), (".gate_proj.", ".w1."),
                      (".up_proj.", ".w3."), (".down_proj.", ".w2.")),
    **COMMON))

MODELS.register("Qwen2Moe")(Adapter(
    name="Qwen2Moe", model_types=("qwen2_moe",),
    groups=ATTENTION + DENSE_MLP + (  # the shared expert runs before the routed ones
        ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),
        ("mlp.shared_expert.down_proj",),
    ) + EXPERTS,
    dense=("mlp.gate", "mlp.shared_expert_gate"), **COMMON))

MODELS.register("Qwen3Moe")(Adapter(
    name="Qwen3Moe", model_types=("qwen3_moe",), groups=ATTENTION + DENSE_MLP + EXPERTS,
    dense=("mlp.gate",), **COMMON))

# Multi-head latent attention: q (through a low-rank q_a / q_b pair when q_lora_rank is set,
# else q_proj) and the compressed kv (kv_a_proj_with_mqa) read the block's hidden states; q_b
# and kv_b read the outputs of q_a_layernorm / kv_a_layernorm. Of the two first groups a block
# has the one whose Linears it has.
MODELS.register("DeepseekV3")(Adapter(
    name="DeepseekV3", model_types=("deepseek_v3",),
    groups=(
        ("self_attn.q_a_proj", "self_attn.kv_a_proj_with_mqa"),
        ("self_attn.q_proj", "self_attn.kv_a_proj_with_mqa"),
        ("self_attn.q_b_proj",),
        ("self_attn.kv_b_proj",),
        ("self_attn.o_proj",),
    ) + DENSE_MLP + EXPERTS + (
        ("mlp.shared_experts.gate_proj", "mlp.shared_experts.up_proj"),
        ("mlp.shared_experts.down_proj",),
    ),
    dense=("mlp.gate",), **COMMON))
