"""BLOOM (bigscience/bloom-*): ALiBi attention, fused query_key_value, biased Linears.

The model builds the ALiBi tensor from the attention mask and hands it to every block as the
`alibi` kwarg; the runner's capture records and replays it like any other argument.
"""
from ..registry import MODELS
from .adapter import Adapter

MODELS.register("Bloom")(Adapter(
    name="Bloom",
    model_types=("bloom",),
    blocks="transformer.h",
    pre_blocks=("transformer.word_embeddings", "transformer.word_embeddings_layernorm"),
    post_blocks=("transformer.ln_f", "lm_head"),
    groups=(
        ("self_attention.query_key_value",),  # q|k|v fused: one Linear, pruned as one
        ("self_attention.dense",),
        ("mlp.dense_h_to_4h",),
        ("mlp.dense_4h_to_h",),
    ),
    # With pretraining_tp > 1 and slow_but_exact, dense and dense_4h_to_h are computed as sums of
    # F.linear over weight slices, which the statistics hooks on those Linears never see. The
    # single Linear call computes the same product (summed in one go instead of by slices).
    config_overrides=(("slow_but_exact", False),),
    # ALiBi: no position table or rotation, so no length limit (position_limit stays empty).
))
