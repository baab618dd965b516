"""Evaluation: perplexity, whole-model or streamed block by block."""
from .perplexity import perplexity  # noqa: F401
