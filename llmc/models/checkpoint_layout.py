"""Where a streamed model's tensors are in a checkpoint, and the names a part is saved under.

A handle presents fused experts as one Linear per expert matrix (llmc.models.experts). A
streamed model reads each such weight straight from the checkpoint, in either of transformers'
layouts:

- one tensor per expert matrix, the published checkpoints' names (what transformers 4 wrote and
  transformers 5's save_pretrained writes again): the unfused names for Qwen-MoE and
  DeepSeek-V3 (`<experts>.<e>.gate_proj.weight`), names the adapter's `checkpoint_names`
  rename for Mixtral (`block_sparse_moe.experts.<e>.w1.weight`);
- fused, as a transformers 5 model holds them (save_pretrained(save_original_format=False)):
  `<experts>.gate_up_proj` [experts, 2 x intermediate, hidden] (each expert's gate rows, then
  its up rows) and `<experts>.down_proj` [experts, hidden, intermediate]. Expert e's gate, up or
  down matrix is one contiguous run of bytes in them (`expert_entry`), read alone: no fused
  tensor is ever held whole.

Every shard llmc writes (a finished block's, the saved model's) is in the checkpoint's own
layout, as transformers' save_pretrained writes a model in the layout it was loaded from:
under the published names again (`saved_name`), or fused. A fused tensor's bytes are its
experts' matrices one after the other (gate, up of expert 0, gate, up of expert 1, ...), so
`stored_layout` lists them in that order and the writer writes them as they are, without
stacking a copy (llmc.models.safetensors_io.Pieces).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .experts import expert_modules
from .safetensors_io import TensorEntry

# The Linears of one expert, and where each sits in its module's fused tensors: (Linear,
# fused tensor, which half of its rows: 0 gate, 1 up; None: all of them).
EXPERT_MATRICES = (("gate_proj", "gate_up_proj", 0), ("up_proj", "gate_up_proj", 1),
                   ("down_proj", "down_proj", None))


@dataclass(frozen=True)
class FusedPlace:
    """Where one expert Linear's weight is in a fused experts tensor."""
    name: str  # the fused tensor's key, e.g. model.layers.1.mlp.experts.gate_up_proj
    expert: int
    half: Optional[int]  # 0: the gate rows of gate_up_proj, 1: its up rows; None: the whole


def fused_places(model, adapter) -> Dict[str, FusedPlace]:
    """{expert Linear weight key: its FusedPlace} over every block's experts modules."""
    places = {}
    for index, block in enumerate(adapter.get_blocks(model)):
        for path, module in expert_modules(block, adapter.experts):
            base = f"{adapter.blocks}.{index}.{path}"
            for expert in range(len(module)):
                for linear, fused, half in EXPERT_MATRICES:
                    places[f"{base}.{expert}.{linear}.weight"] = FusedPlace(
                        f"{base}.{fused}", expert, half)
    return places


def expert_entry(fused: TensorEntry, place: FusedPlace) -> Optional[TensorEntry]:
    """The bytes of `place`'s matrix inside the fused tensor `fused` (None: not there)."""
    if len(fused.shape) != 3 or place.expert >= fused.shape[0]:
        return None
    per_expert = fused.nbytes // fused.shape[0]
    shape, offset = fused.shape[1:], fused.offset + place.expert * per_expert
    if place.half is not None:
        if shape[0] % 2:
            return None
        per_expert //= 2
        shape, offset = (shape[0] // 2, shape[1]), offset + place.half * per_expert
    return TensorEntry(fused.file, fused.dtype, tuple(shape), offset, per_expert)


def renamed(entries: Dict[str, TensorEntry], checkpoint_names) -> Dict[str, TensorEntry]:
    """`entries` under the model's names: each (model's, checkpoint's) name fragment of
    `checkpoint_names` (the adapter's) turned back into the model's."""
    out = {}
    for name, entry in entries.items():
        for model_part, checkpoint_part in checkpoint_names:
            name = name.replace(checkpoint_part, model_part)
        out[name] = entry
    return out


def saved_name(key: str, checkpoint_names) -> str:
    """The name save_pretrained gives model key `key`: its fragments in checkpoint_names
    renamed to the checkpoint's, in reverse order."""
    for model_part, checkpoint_part in reversed(checkpoint_names):
        key = key.replace(model_part, checkpoint_part)
    return key


class CheckpointLayout:
    """The model's keys against a set of safetensors entries: which entry (or run of bytes in
    one) holds each key's tensor; and how a part's keys are stored again."""

    def __init__(self, model, adapter, fused: bool = False, renamed: bool = False):
        self.prefix = getattr(model, "base_model_prefix", "")
        self.places = fused_places(model, adapter)
        self.checkpoint_names = adapter.checkpoint_names
        self.fused = fused  # the checkpoint holds the experts fused: stored so again
        self.renamed = renamed  # it names tensors as checkpoint_names says: stored so again

    def read_from(self, entries: Dict[str, TensorEntry]) -> Dict[str, TensorEntry]:
        """`entries` (a checkpoint's) under the model's names; notes the checkpoint's layout
        (fused experts, renamed tensors), which every shard written from now on keeps."""
        model_named = self.model_named(entries)
        self.renamed = set(model_named) != set(entries)
        self.fused = any(self.name_in(key, model_named) is None and
                         self.name_in(place.name, model_named) is not None
                         for key, place in self.places.items())
        return model_named

    def model_named(self, entries: Dict[str, TensorEntry]) -> Dict[str, TensorEntry]:
        """`entries` (a checkpoint's or a shard llmc wrote) under the model's names."""
        return renamed(entries, self.checkpoint_names)

    def name_in(self, key: str, names) -> Optional[str]:
        """The name `names` holds model key `key` under: the same, or with/without the base
        model's prefix (checkpoints saved from the base model lack it; from_pretrained maps
        both)."""
        prefix = self.prefix
        if key in names:
            return key
        if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in names:
            return key[len(prefix) + 1:]
        if prefix and f"{prefix}.{key}" in names:
            return f"{prefix}.{key}"
        return None

    def source_in(self, entries: Dict[str, TensorEntry], key: str) -> Optional[TensorEntry]:
        """Where `entries` hold `key`'s bytes: its own tensor, or its expert's run of bytes in
        a fused tensor; None where they hold neither."""
        name = self.name_in(key, entries)
        if name is not None:
            return entries[name]
        place = self.places.get(key)
        fused = self.name_in(place.name, entries) if place else None
        return expert_entry(entries[fused], place) if fused is not None else None

    def stored_layout(self, keys) -> List[Tuple[str, Tuple[str, ...], bool]]:
        """(stored name, the keys whose tensors it holds in byte order, whether it is fused) of
        part `keys`, in the keys' order: each key under its saved name; with fused experts, an
        expert's Linears inside their fused tensors."""
        layout: List[Tuple[str, list]] = []
        members: Dict[str, list] = {}  # fused name -> [(expert, half, key)]
        for key in keys:
            place = self.places.get(key) if self.fused else None
            if place is None:
                name = saved_name(key, self.checkpoint_names) if self.renamed else key
                layout.append((name, [(0, 0, key)]))
                continue
            if place.name not in members:
                members[place.name] = []
                layout.append((place.name, members[place.name]))
            members[place.name].append((place.expert, place.half or 0, key))
        return [(name, tuple(key for _, _, key in sorted(parts)), name in members)
                for name, parts in layout]
