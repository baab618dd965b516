"""Pruning methods (registered on import) and allocation plans."""
from . import (admm, dsnot, magnitude, mixgpt, none, owl, ria, sparsegpt,  # noqa: F401
               wanda)  # (register)
from .allocation import Target, UniformPlan, UnitPlan  # noqa: F401
from .base import Sparsifier, build_method  # noqa: F401
