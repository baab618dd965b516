"""OPT (facebook/opt-*): learned positions, biased Linears, post-block projections.

opt-350m differs from the rest: its word embeddings are narrower than the blocks
(word_embed_proj_dim 512 < hidden_size 1024), so project_in / project_out map between them, and
it normalises after attention (do_layer_norm_before False), so there is no final_layer_norm.
Absent modules are skipped; the projections and lm_head are never pruned (they are not in a block).
"""
from ..registry import MODELS
from .adapter import Adapter, Widths

MODELS.register("OPT")(Adapter(
    name="OPT",
    model_types=("opt",),
    blocks="model.decoder.layers",
    pre_blocks=("model.decoder.embed_tokens", "model.decoder.embed_positions",
                "model.decoder.project_in"),
    post_blocks=("model.decoder.final_layer_norm", "model.decoder.project_out", "lm_head"),
    groups=(
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.out_proj",),
        ("fc1",),
        ("fc2",),
    ),
    position_limit=("max_position_embeddings",),  # learned positions: a table this long
    # its config has no head dimension: the heads cannot be fewer than hidden_size says
    widths=Widths(channels="ffn_dim", channel_in=("fc1",), channel_out="fc2",
                  channel_bias="enable_bias"),
))
