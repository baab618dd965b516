"""Making a model smaller in place: decoder blocks deleted, attention heads (whole KV groups) and
MLP channels sliced out of a block's Linears, and the config rewritten to say so, so that the
model saves as a standard checkpoint of its family that plain `from_pretrained` loads.

What may change is what the family's config can say: the adapter's `widths` table names the
config keys and Linears, and every change is checked by building the family's model from the
new config on the meta device (no memory) and comparing its tensors' names and shapes with the
model's (`check_rebuilds`). The biases that config keys switch on (attention_bias, mlp_bias)
come from that model too (`target_biases`): a Linear gets the bias a structured method folded
in (llmc.structure.width), or zeros where the smaller config gives it one it lacks."""
import copy
import dataclasses
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn as nn
from loguru import logger

from ..errors import LlmcError
from .experts import unfuse_experts

PER_LAYER_KEYS = ("layer_types",)  # config lists with one entry per decoder block
LAYER_INDEX_KEYS = ("mlp_only_layers",)  # config lists of block indices (Qwen2/3-MoE's dense)
LEADING_COUNT_KEYS = ("first_k_dense_replace",)  # the first k blocks differ (DeepSeek's dense)


@dataclass(frozen=True)
class Shape:
    """A block's widths as the config says them, and the Linears that hold them."""
    heads: int
    kv_heads: int
    head_dim: int
    channels: int
    attention_out: str
    channel_out: str


def block_shape(handle) -> Shape:
    table, config = handle.adapter.widths, handle.model.config
    heads = kv_heads = head_dim = 0
    if table.heads:
        heads = getattr(config, table.heads[0])
        kv_heads = getattr(config, table.heads[1], None) or heads
        head_dim = getattr(config, table.heads[2], None) or config.hidden_size // heads
    return Shape(heads, kv_heads, head_dim, getattr(config, table.channels),
                 table.attention_out, table.channel_out)


def parameter_count(model: nn.Module) -> int:
    """Parameters, a tied one (lm_head = embeddings) once."""
    return sum(p.numel() for p in model.parameters())


def _replace(block: nn.Module, name: str, weight: torch.Tensor, bias) -> None:
    """The Linear at `name` replaced by one holding `weight` (and `bias`, or none)."""
    old = block.get_submodule(name)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight = nn.Parameter(weight.contiguous(), requires_grad=old.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.contiguous(), requires_grad=old.weight.requires_grad)
    parent, _, leaf = name.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, leaf, new)


def keep_rows(block: nn.Module, name: str, rows: torch.Tensor) -> None:
    linear = block.get_submodule(name)
    rows = rows.to(linear.weight.device)
    bias = linear.bias.data.index_select(0, rows) if linear.bias is not None else None
    _replace(block, name, linear.weight.data.index_select(0, rows), bias)


def keep_columns(block: nn.Module, name: str, columns: torch.Tensor) -> None:
    linear = block.get_submodule(name)
    columns = columns.to(linear.weight.device)
    bias = linear.bias.data.clone() if linear.bias is not None else None
    _replace(block, name, linear.weight.data.index_select(1, columns), bias)


def head_rows(groups: List[int], shape: Shape):
    """(query rows, key/value rows) of KV groups `groups`: each group's query heads."""
    per_group = shape.heads // shape.kv_heads
    dim = torch.arange(shape.head_dim)
    queries = [h * shape.head_dim + dim for g in groups
               for h in range(g * per_group, (g + 1) * per_group)]
    kv = [g * shape.head_dim + dim for g in groups]
    return torch.cat(queries), torch.cat(kv)


def slice_block(block: nn.Module, table, shape: Shape, widths, biases=()) -> None:
    """`block` keeps the KV groups and channels `widths` (a BlockWidths) names; the biases it
    adds are folded into their Linears (created where there was none), and every Linear named
    in `biases` (those the smaller config gives a bias: target_biases) that still has none gets
    zeros. Shapes only change, so it works alike on real and meta-device tensors."""
    if widths.kept_groups is not None:
        queries, kv = head_rows(widths.kept_groups, shape)
        if len(table.queries) == 1:  # q|k|v stacked in one Linear's rows
            q_rows, kv_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
            keep_rows(block, table.queries[0],
                      torch.cat([queries, q_rows + kv, q_rows + kv_rows + kv]))
        else:
            for name, rows in zip(table.queries, (queries, kv, kv)):
                keep_rows(block, name, rows)
        keep_columns(block, table.attention_out, queries)
        for path in table.kv_head_attributes:
            parent, _, leaf = path.rpartition(".")
            setattr(block.get_submodule(parent), leaf, len(widths.kept_groups))
    if widths.kept_channels is not None:
        channels = torch.tensor(widths.kept_channels)
        stacked = torch.cat([channels + i * shape.channels for i in range(table.channel_stack)])
        for name in table.channel_in:
            keep_rows(block, name, stacked)
        keep_columns(block, table.channel_out, channels)
    for name, added in widths.added_bias.items():
        linear = block.get_submodule(name)
        bias = added.to(device=linear.weight.device, dtype=torch.float64)
        if linear.bias is not None:
            bias = bias + linear.bias.data.double()
        linear.bias = nn.Parameter(bias.to(linear.weight.dtype),
                                   requires_grad=linear.weight.requires_grad)
    for name in biases:
        linear = block.get_submodule(name)
        if linear.bias is None:
            linear.bias = nn.Parameter(
                torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                            device=linear.weight.device),
                requires_grad=linear.weight.requires_grad)


def target_biases(handle, rebuilt: Dict[str, tuple]) -> Dict[int, List[str]]:
    """{block index: the Linears (relative to it) that the model built from the smaller config
    (`rebuilt`: its tensor shapes, as check_expressible returns them) gives a bias}:
    slice_block adds zeros where the model has none, so the model holds exactly the smaller
    config's tensors."""
    found = {}
    for index in range(handle.num_blocks):
        prefix, block = f"{handle.block_path(index)}.", handle.block(index)
        names = [name[len(prefix):-len(".bias")] for name in rebuilt
                 if name.startswith(prefix) and name.endswith(".bias")]
        found[index] = [name for name in names
                        if isinstance(block.get_submodule(name), nn.Linear)]
    return found


def _set_widths(config, table, shape: Shape, kept: "Kept") -> None:
    if kept.groups != shape.kv_heads:
        heads_key, kv_key, dim_key = table.heads
        setattr(config, heads_key, kept.groups * (shape.heads // shape.kv_heads))
        setattr(config, kv_key, kept.groups)
        setattr(config, dim_key, shape.head_dim)
    setattr(config, table.channels, kept.channels)
    if kept.attention_bias:
        setattr(config, table.attention_bias, True)
    if kept.channel_bias:
        setattr(config, table.channel_bias, True)


@dataclass(frozen=True)
class Kept:
    """What every block keeps (uniform widths: the config says one number each): KV groups,
    MLP channels, and whether the attention's output / the MLP's output Linear gains a bias."""
    groups: int
    channels: int
    attention_bias: bool = False
    channel_bias: bool = False


def biases_expressible(handle, shape: Shape, kept: Kept) -> Kept:
    """`kept` with each bias it asks for kept only where the family's config can give that
    Linear one (a model built from the config with the bias key set has it)."""
    table = handle.adapter.widths
    found = {}
    for wanted, key, name, field in (
            (kept.attention_bias, table.attention_bias, table.attention_out, "attention_bias"),
            (kept.channel_bias, table.channel_bias, table.channel_out, "channel_bias")):
        if not wanted:
            continue
        config = copy.deepcopy(handle.model.config)
        if key:
            setattr(config, key, True)
        possible = bool(key) and f"{handle.block_path(0)}.{name}.bias" in _rebuilt(
            handle.model, config)
        if not possible:
            logger.warning(f"sparse.width.bias_compensation: {handle.adapter.name}'s config "
                           f"cannot give {name} a bias, so its removed inputs' mean is not "
                           "folded in there")
        found[field] = possible
    return dataclasses.replace(kept, **found)


def check_expressible(handle, shape: Shape, kept: Kept) -> Dict[str, tuple]:
    """Before any pass: the family's config can say these widths. A model built from the
    changed config (meta device) must have block 0's Linears at the new widths; else one error
    naming what is missing. Returns that model's {tensor name: shape} (target_biases)."""
    table, family = handle.adapter.widths, handle.adapter.name
    if kept.groups != shape.kv_heads and not table.heads:
        raise LlmcError(f"sparse.width.heads: {family}'s config cannot say fewer attention heads "
                        "(it has no head dimension and key-value head keys); set "
                        "sparse.width.heads: 0")
    config = copy.deepcopy(handle.model.config)
    _set_widths(config, table, shape, kept)
    rebuilt = _rebuilt(handle.model, config)
    prefix = f"{handle.block_path(0)}."
    rows = kept.groups * shape.head_dim
    expected = {table.channel_out: (None, kept.channels),
                **{name: (kept.channels * table.channel_stack, None)
                   for name in table.channel_in}}
    if table.heads:
        query_rows = rows * (shape.heads // shape.kv_heads)
        if len(table.queries) == 1:
            expected[table.queries[0]] = (query_rows + 2 * rows, None)
        else:
            expected.update(zip(table.queries, ((query_rows, None), (rows, None),
                                                (rows, None))))
        expected[table.attention_out] = (None, query_rows)
    for name, (out, into) in expected.items():
        found = rebuilt.get(f"{prefix}{name}.weight")
        if found is None or (out is not None and found[0] != out) or (
                into is not None and found[1] != into):
            raise LlmcError(f"sparse.width: {family}'s config cannot say the new widths: a model "
                            f"built from it has {name} of shape {_shape(found)} (wanted "
                            f"{out or 'any'} x {into or 'any'}); set sparse.width.heads or "
                            "channels to 0 for the part it cannot say")
    return rebuilt


def resize_config(handle, shape: Shape, kept: Kept) -> None:
    """The config says the new widths (heads as KV groups, the head dimension explicitly) and
    switches on the bias keys `kept` asks for; then check_rebuilds (every block sliced, with the
    zero biases of target_biases)."""
    _set_widths(handle.model.config, handle.adapter.widths, shape, kept)
    check_rebuilds(handle.model, handle.adapter)


def remove_blocks(handle, removed: List[int]) -> None:
    """Delete blocks `removed` (indices of the model as it is); the rest keep their order and
    are renumbered (their attention's layer_idx, which indexes the KV cache), and the config's
    block count and per-block lists (layer_types) drop the removed entries."""
    blocks = handle.adapter.get_blocks(handle.model)
    config = handle.model.config
    count = len(blocks)
    for index in sorted(removed, reverse=True):
        del blocks[index]
    for new_index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    gone = set(removed)
    config.num_hidden_layers = len(blocks)
    for key in PER_LAYER_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, list) and len(values) == count:
            setattr(config, key, [v for i, v in enumerate(values) if i not in gone])
    renumbered = {old: new for new, old in enumerate(i for i in range(count) if i not in gone)}
    for key in LAYER_INDEX_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, list):
            setattr(config, key, [renumbered[i] for i in values if i in renumbered])
    for key in LEADING_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(config, key, sum(1 for i in range(min(value, count)) if i not in gone))
    handle.forget_blocks()
    check_rebuilds(handle.model, handle.adapter)


def _rebuilt(model: nn.Module, config=None, adapter=None) -> Dict[str, tuple]:
    """{tensor name: shape} of the model transformers builds from `config` (`model`'s), its
    fused experts presented as the handle presents them (`adapter`'s, llmc.models.experts)."""
    config = copy.deepcopy(model.config if config is None else config)
    try:
        with torch.device("meta"):
            rebuilt = type(model)(config)
    except Exception as err:  # the family's own config checks
        raise LlmcError(f"the smaller model's config is not one {type(model).__name__} accepts "
                        f"({type(err).__name__}: {err})") from None
    if adapter is not None and adapter.experts:
        unfuse_experts(adapter.get_blocks(rebuilt), adapter.experts)
    return {name: tuple(t.shape) for name, t in rebuilt.state_dict().items()}


def check_rebuilds(model: nn.Module, adapter=None) -> None:
    """The model transformers builds from this model's config has exactly its tensors (names
    and shapes): what from_pretrained of the saved model will hold. With the model's `adapter`,
    both compared with their experts unfused (as a handle holds the model: the live model's
    are never re-fused, so a streamed skeleton's tensors keep their sources)."""
    expected = _rebuilt(model, adapter=adapter)
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name in sorted(set(expected) | set(actual)):
        if expected.get(name) != actual.get(name):
            raise LlmcError(f"{type(model).__name__}'s config cannot describe the smaller model: "
                            f"{name} is {_shape(actual.get(name))} here and "
                            f"{_shape(expected.get(name))} in a model built from its config")


def _shape(shape) -> str:
    return "absent" if shape is None else str(list(shape))
