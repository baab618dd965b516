"""Structured methods (registered on import): which whole blocks, attention heads and MLP
channels to remove. The engine removes them (llmc.models.slicing), so the saved model is a
standard, smaller one; an unstructured method may then prune what remains (sparse.method)."""
from . import depth, width  # noqa: F401  (register)
from .base import BlockWidths, Structure, build_structure, structure_class  # noqa: F401
