"""Qwen3: the Llama table (q_norm / k_norm are norms, not Linears). With use_sliding_window,
config.layer_types gives some layers a sliding-window mask and the others the global one; the
runner captures each block's own."""
import dataclasses

from ..registry import MODELS
from .llama import LLAMA

MODELS.register("Qwen3")(dataclasses.replace(LLAMA, name="Qwen3", model_types=("qwen3",)))
