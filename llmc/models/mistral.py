"""Mistral: the Llama table, with sliding-window attention (`sliding_window` in config.json).

Every block gets the same sliding-window mask from the model, which the runner captures and
replays; the Llama table also lists "mistral", so configs that say model.type: Llama keep
working, and model.type auto picks this one."""
import dataclasses

from ..registry import MODELS
from .llama import LLAMA

MODELS.register("Mistral")(dataclasses.replace(LLAMA, name="Mistral", model_types=("mistral",)))
