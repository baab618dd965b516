"""A model adapter is a table: where the blocks live, which modules run before and after them,
and which Linears of a block share one input (its input groups, in forward order). It knows no
method.

Groups may differ between blocks: a group is used in a block that has its Linears (a MoE
model's dense layers have an MLP, its other layers experts), and a `*` in a name stands for
each expert of the ModuleList at the path before it (`mlp.experts.*.gate_proj`: one group per
expert). Fused 3-D expert weights are presented as such a list while a handle holds the model
(`experts`, llmc.models.experts)."""
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch.nn as nn
from loguru import logger

from ..errors import ConfigError, LlmcError


@dataclass(frozen=True)
class Widths:
    """Where a block's widths live, for structured width pruning (llmc.models.slicing): the
    config keys that size them and the Linears (relative to a block) that hold them."""
    channels: str  # config key of the MLP's intermediate width (intermediate_size)
    channel_in: Tuple[str, ...]  # Linears whose output rows are the channels (gate, up)
    channel_out: str  # the Linear reading them, one input column each (down)
    channel_bias: str = ""  # config key giving the MLP's Linears biases ("" none)
    # config keys of the query heads, key-value heads and head dimension (() none: the
    # config cannot say fewer heads)
    heads: Tuple[str, ...] = ()
    # the q, k, v Linears; or one Linear holding q|k|v stacked in its rows (Phi-3's qkv_proj)
    queries: Tuple[str, ...] = ("", "", "")
    # how many blocks of channels each channel_in Linear stacks in its rows (Phi-3's
    # gate_up_proj: gate then up, 2)
    channel_stack: int = 1
    # module attributes (relative to a block) the modeling code keeps the KV head count in,
    # read in forward (Phi-3's self_attn.num_key_value_heads): set to the kept groups
    kv_head_attributes: Tuple[str, ...] = ()
    attention_out: str = ""  # the Linear reading the heads (o_proj)
    attention_bias: str = ""  # config key giving the attention's Linears biases ("" none)


@dataclass(frozen=True)
class Adapter:
    name: str
    model_types: Tuple[str, ...]  # config.model_type values this table describes
    blocks: str  # dotted path of the ModuleList of decoder blocks
    # Modules the model runs before block 0 / after the last block, in the order it applies them.
    # Absent or None ones are skipped: e.g. OPT's project_in/out and final_layer_norm exist only
    # in some checkpoints.
    pre_blocks: Tuple[str, ...]
    post_blocks: Tuple[str, ...]
    groups: Tuple[Tuple[str, ...], ...]  # Linears (relative to a block) sharing one input
    # True where the modeling code ships with the checkpoint instead of transformers (Baichuan):
    # loading it runs that code, which the user must allow (model.trust_remote_code).
    trust_remote_code: bool = False
    # (config attribute, value) set before the model is built, where a checkpoint's setting would
    # hide a Linear's input from the statistics hooks (BLOOM's slow_but_exact).
    config_overrides: Tuple[Tuple[str, Any], ...] = ()
    # The longest sequence the model's positions cover: the config attributes that hold it, the
    # first one a config has wins (max_position_embeddings). Empty where positions have no limit
    # (ALiBi: BLOOM).
    position_limit: Tuple[str, ...] = ()
    # Where one table covers variants with and without such a limit (Baichuan: rotary 7B, ALiBi
    # 13B): the module, relative to a block, that only the limited variants have.
    position_limit_module: Optional[str] = None
    # Paths (relative to a block) of fused experts modules (3-D gate_up_proj / down_proj), each
    # presented as one ExpertMLP of Linears per expert while a handle holds the model.
    experts: Tuple[str, ...] = ()
    # (the model's, the checkpoint's) name fragments where the published checkpoints name
    # tensors otherwise and transformers renames them on loading and back on saving (Mixtral:
    # (".mlp.", ".block_sparse_moe."), (".gate_proj.", ".w1."), ...): the streamed engine reads
    # and saves such checkpoints through them (llmc.models.checkpoint_layout).
    checkpoint_names: Tuple[Tuple[str, str], ...] = ()
    # Linears (relative to a block) deliberately left dense: routers and gates that choose
    # between experts (Qwen2-MoE's shared_expert_gate), whose few rows pruning would distort.
    dense: Tuple[str, ...] = ()
    # What the model does to the last post-block module's output before its loss, where it
    # is more than that module (Gemma 2: final-logit soft-capping): (config, logits) -> logits.
    # The streamed eval applies it; None: the logits are the last module's output.
    logits: Optional[Callable] = None
    # Which config keys size the heads and MLP channels, and the Linears that hold them
    # (structured width pruning); None: this table does not say.
    widths: Optional[Widths] = None

    def describe(self) -> dict:
        """The table, for results.json (a discovered one is recorded with every run)."""
        return {"name": self.name, "blocks": self.blocks, "pre_blocks": list(self.pre_blocks),
                "post_blocks": list(self.post_blocks),
                "groups": [list(group) for group in self.groups],
                "experts": list(self.experts), "dense": list(self.dense)}

    def get_blocks(self, model) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    @staticmethod
    def present(model, names) -> List[Tuple[str, nn.Module]]:
        """(name, module) of those of `names` the model has (absent and None ones skipped)."""
        found = []
        for name in names:
            try:
                found.append((name, model.get_submodule(name)))
            except AttributeError:
                continue
        return found

    def pre_block_modules(self, model):
        return [module for _, module in self.present(model, self.pre_blocks)]

    def post_block_modules(self, model):
        """The modules after the last block (final norm, projections, head), in order."""
        return [module for _, module in self.present(model, self.post_blocks)]

    def position_limit_of(self, config, model) -> Optional[Tuple[str, int]]:
        """(config attribute, value) bounding the sequence length `model` (built from `config`)
        can take, or None where its positions have no limit."""
        if self.position_limit_module is not None:
            try:
                self.get_blocks(model)[0].get_submodule(self.position_limit_module)
            except (AttributeError, IndexError):
                return None
        for key in self.position_limit:
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return key, value
        if self.position_limit:
            logger.warning(f"model.type {self.name}: the config has none of "
                           f"{', '.join(self.position_limit)}, so sequence lengths are not "
                           "checked against the model's position limit")
        return None

    def check_remote_code_allowed(self, allowed: bool) -> None:
        """Refuse, before any of its code runs, a checkpoint llmc was not allowed to run code of."""
        if self.trust_remote_code and not allowed:
            raise ConfigError(
                f"model.type {self.name}: the modeling code of {self.name} checkpoints ships with "
                "the checkpoint (its .py files) and is not part of transformers, so llmc must be "
                "allowed to run it; set model.trust_remote_code: True (only for checkpoints you "
                "trust)")

    def apply_config_overrides(self, config) -> None:
        for key, value in self.config_overrides:
            if getattr(config, key, value) != value:
                logger.warning(f"model.type {self.name}: setting {key}={value} (the checkpoint "
                               f"says {getattr(config, key)!r}); see docs/models.md")
            setattr(config, key, value)

    def linear_names(self):
        """The table's Linear names (a `*` unexpanded); a block's own: `linear_names_of`."""
        return [name for group in self.groups for name in group]

    def groups_of(self, block: nn.Module) -> Tuple[Tuple[str, ...], ...]:
        """The input groups `block` has: `*` expanded over its experts, groups it lacks any
        Linear of left out (check() then finds the Linears no group covers)."""
        found = []
        for group in self.groups:
            expanded = _expand(block, group)
            for names in expanded:
                if all(_is_linear(block, name) for name in names):
                    found.append(names)
        return tuple(found)

    def linear_names_of(self, block: nn.Module) -> List[str]:
        return [name for group in self.groups_of(block) for name in group]

    def check(self, model):
        """Every Linear in every block must be in exactly one input group (or deliberately
        dense), so none escapes pruning."""
        try:
            blocks = self.get_blocks(model)
        except AttributeError:
            raise LlmcError(f"model.type {self.name}: the model ({type(model).__name__}) has no "
                            f"{self.blocks}, where {self.name} models keep their blocks; this "
                            f"checkpoint is not a {self.name} model (set model.type to its "
                            "architecture)") from None
        if len(blocks) == 0:
            raise LlmcError(f"model.type {self.name}: the model has no decoder blocks "
                            "(num_hidden_layers is 0 in its config.json); nothing to prune")
        for index, block in enumerate(blocks):
            present = {n for n, m in block.named_modules() if isinstance(m, nn.Linear)}
            listed = self.linear_names_of(block)
            present -= set(self.dense)
            if present != set(listed) or len(set(listed)) != len(listed) or not listed:
                raise LlmcError(
                    f"model.type {self.name}: block {index} has Linears {sorted(present)} but the "
                    f"adapter lists {sorted(listed)}; this checkpoint is not a {self.name} "
                    "model (set model.type to its architecture)")


def _is_linear(block, name) -> bool:
    try:
        return isinstance(block.get_submodule(name), nn.Linear)
    except AttributeError:
        return False


def _expand(block, group) -> List[Tuple[str, ...]]:
    """`group` once, or once per expert where its names hold `*` (none where the block has no
    list at the path before it)."""
    if not any("*" in name for name in group):
        return [group]
    prefix = group[0].split("*")[0].rstrip(".")
    try:
        experts = block.get_submodule(prefix)
    except AttributeError:
        return []
    if not isinstance(experts, nn.ModuleList):
        return []
    return [tuple(name.replace("*", str(e)) for name in group) for e in range(len(experts))]
