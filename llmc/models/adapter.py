"""A model adapter is a table: where the blocks, embeddings, final norm and head live, and which
Linears of a block share one input (its input groups, in forward order). It knows no method."""
from dataclasses import dataclass
from typing import Tuple

import torch.nn as nn

from ..errors import LlmcError


@dataclass(frozen=True)
class Adapter:
    name: str
    model_types: Tuple[str, ...]  # config.model_type values this table describes
    blocks: str  # dotted path of the ModuleList of decoder blocks
    embeddings: Tuple[str, ...]  # modules run before block 0 (missing ones are skipped)
    final_norm: str
    head: str
    groups: Tuple[Tuple[str, ...], ...]  # Linears (relative to a block) sharing one input
    trust_remote_code: bool = False

    def get_blocks(self, model) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def _present(self, model, names):
        found = []
        for name in names:
            try:
                found.append(model.get_submodule(name))
            except AttributeError:
                continue
        return found

    def pre_block_modules(self, model):
        return self._present(model, self.embeddings)

    def post_block_modules(self, model):
        """Final norm then head, in the order the model applies them."""
        return self._present(model, (self.final_norm, self.head))

    def linear_names(self):
        return [name for group in self.groups for name in group]

    def check(self, model):
        """Every Linear in every block must be in exactly one input group, so none escapes pruning."""
        listed = set(self.linear_names())
        for index, block in enumerate(self.get_blocks(model)):
            present = {n for n, m in block.named_modules() if isinstance(m, nn.Linear)}
            if present != listed:
                raise LlmcError(
                    f"model.type {self.name}: block {index} has Linears {sorted(present)} but the "
                    f"adapter lists {sorted(listed)}; this checkpoint is not a {self.name} "
                    "model (set model.type to its architecture)")
