"""Qwen2: the Llama table; its q/k/v projections carry biases, which pruning leaves alone."""
import dataclasses

from ..registry import MODELS
from .llama import LLAMA

MODELS.register("Qwen2")(dataclasses.replace(LLAMA, name="Qwen2", model_types=("qwen2",)))
