"""What a structured method is: its settings (keys under `sparse:`, as a method's), what it
observes during one dense pass over the calibration windows, and what it chooses to remove.

It never removes anything itself and knows no block loop: the runner
(llmc.runner.restructure) streams the windows through the blocks and hands it, per block, the
hidden states entering and leaving it (`observe`, when `HIDDEN`) and the statistics `needs` of
the Linears it `measures`; the engine (llmc.models.slicing) then slices the widths it chose per
block (`block_widths`) and deletes the blocks it chose (`blocks_to_remove`)."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import ConfigError
from ..registry import STRUCTURES


@dataclass
class BlockWidths:
    """What one block keeps: the indices of its KV groups (each with its query heads) and of
    its MLP channels, ascending (None: that part unchanged), and the bias each Linear gains
    (name -> a vector of its outputs: the removed inputs' mean contribution, folded in)."""
    kept_groups: Optional[List[int]] = None
    kept_channels: Optional[List[int]] = None
    removed_groups: List[int] = field(default_factory=list)
    removed_channels: List[int] = field(default_factory=list)
    added_bias: Dict[str, torch.Tensor] = field(default_factory=dict)


class Structure:
    """A structured method. Subclasses declare `Settings` (as a method's: fields made with
    llmc.config.typed.setting, `check(weight_cfg)`), and either
    - `HIDDEN = True`, `observe(index, batch, hidden_in, hidden_out)` and
      `blocks_to_remove(num_blocks)` (depth: whole blocks), or
    - `needs` (statistics of the Linears `measures(table)` names), `kept(shape)` (what every
      block keeps: llmc.models.slicing.Kept, checked expressible before the pass) and
      `block_widths(shape, kept, linears, statistics)` (width: heads and channels per block;
      `kept` as checked, with the biases the config can give)."""

    @dataclass
    class Settings:
        def check(self, weight_cfg) -> None:
            """Raise one ConfigError for a bad value, before any heavy work."""

    NAME = ""
    HIDDEN = False
    needs: Tuple[str, ...] = ()

    def __init__(self, sparse_cfg):
        self.settings = sparse_cfg.settings_for(type(self))

    def start(self, num_blocks: int) -> None:
        """The pass begins on a model of `num_blocks` blocks (an amount out of range is an
        error here, before any forward)."""

    def measures(self, table) -> Tuple[str, ...]:
        """The Linears (relative to a block) whose inputs `needs` are gathered on."""
        return ()

    def observe(self, index: int, batch: int, hidden_in, hidden_out) -> None:
        """One batch of the hidden states entering block `index` and leaving it (the last
        block's: after the final norm, as transformers' output_hidden_states reports them)."""

    def totals(self) -> Optional[torch.Tensor]:
        """What `observe` accumulated, as one float64 tensor (None: nothing): under torchrun
        the runner sums it over the ranks and hands it back (`take_totals`) before
        `blocks_to_remove`, as it combines statistics."""
        return None

    def take_totals(self, totals: torch.Tensor) -> None:
        """Every rank's `totals`, summed."""

    def blocks_to_remove(self, num_blocks: int) -> List[int]:
        return []

    def block_widths(self, shape, kept, linears, statistics) -> Optional[BlockWidths]:
        return None

    def record(self) -> dict:
        """What the choice was computed from, for results.json."""
        return {}

    def describe(self) -> dict:
        from ..config.typed import to_dict
        return {"name": self.NAME, **to_dict(self.settings)}


def register(name):
    def add(cls):
        cls.NAME = name
        return STRUCTURES.register(name)(cls)
    return add


def structure_class(sparse_cfg):
    """The Structure class sparse.structure names, or None."""
    if sparse_cfg.structure is None:
        return None
    return STRUCTURES.lookup(sparse_cfg.structure, "sparse.structure")


def build_structure(sparse_cfg) -> Optional[Structure]:
    cls = structure_class(sparse_cfg)
    return cls(sparse_cfg) if cls is not None else None


def count_of(value: float, total: int, key: str) -> int:
    """A count given as a count (>= 1, whole) or a fraction of `total` (< 1, rounded)."""
    if value >= 1:
        if value != int(value):
            raise ConfigError(f"{key}: {value} is a count (>= 1) or a fraction (< 1); a count "
                              "must be whole")
        return int(value)
    return int(round(value * total))


def check_amount(value: float, key: str) -> None:
    if value < 0:
        raise ConfigError(f"{key} must be >= 0 (a count, or a fraction below 1), got {value}")
