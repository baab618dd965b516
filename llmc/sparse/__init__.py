"""Pruning methods (registered on import) and allocation plans."""
from . import magnitude, sparsegpt, wanda  # noqa: F401  (register)
from .allocation import Target, UniformPlan  # noqa: F401
from .base import Sparsifier  # noqa: F401
