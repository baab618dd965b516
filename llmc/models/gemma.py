"""Gemma 2 and Gemma 3 (text): the Llama table's Linears, with what a table cannot say.

- Layers alternate sliding-window and global attention (config.layer_types); Gemma 3 also
  gives each layer type its own rotary table. The runner captures every block's arguments.
- The embeddings are scaled by sqrt(hidden_size) before block 0 (Gemma 2 in the model's
  forward, Gemma 3 in its embedding module): part of what the capture records.
- The final logits are soft-capped, `cap * tanh(logits / cap)` (final_logit_softcapping),
  in the causal-LM head's forward, not in a module: the `logits` hook applies it where the
  runner computes logits itself (the streamed eval).
"""
import dataclasses

import torch

from ..registry import MODELS
from .llama import LLAMA


def soft_capped_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """What Gemma2ForCausalLM / Gemma3ForCausalLM do to lm_head's output."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap


GEMMA2 = MODELS.register("Gemma2")(dataclasses.replace(
    LLAMA, name="Gemma2", model_types=("gemma2",), logits=soft_capped_logits))
MODELS.register("Gemma3")(dataclasses.replace(
    LLAMA, name="Gemma3", model_types=("gemma3_text",), logits=soft_capped_logits))
