"""A model whose weights stay on disk: the skeleton is built without memory for its parameters
(meta device), and a part's tensors are read from the checkpoint's safetensors only while the
part is used (inside `block_on`, `pre_blocks_on`, `post_blocks_on`, `whole_on`), then dropped.

A block the runner has finished (`finish_block`) is written to its own safetensors shard in the
run's shard directory at once, and read from there from then on (the transformed eval, the
report, the save). `save_pretrained` moves those shards into the output directory and writes the
parts no run changes (embeddings, head) from the checkpoint, with the standard
`model.safetensors.index.json`, config, generation config (and remote code) beside them.

The bytes a part holds are the checkpoint's, converted to the skeleton's dtype as
`from_pretrained` converts them, so a streamed run computes on exactly the tensors an in-memory
run holds (tests/models/test_stream.py proves bit-identical weights for every adapter and method).
"""
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn as nn
from loguru import logger

from ..errors import LlmcError
from .checkpoint_layout import CheckpointLayout
from .freed_memory import release_freed_memory
from .handle import ModelHandle
from .safetensors_io import Pieces, TensorEntry, read_tensor, tensor_entries, write_tensors

INDEX = "model.safetensors.index.json"
# A block as a structured pass left it (smaller, not yet pruned), beside the finished blocks'
# shards: a resumed run reads the blocks it has not finished from there.
SLICED = "sliced-{:05d}.safetensors"
# The column orders (RIA's reallocation: handle.column_orders) of a finished block's Linears,
# beside its shard: a resumed run reads them back with the block.
ORDERS = "orders-{:05d}.safetensors"


class NotStreamable(LlmcError):
    """The checkpoint's tensor names are not the model's (up to the base model's prefix)."""

    def __init__(self, why: str):
        super().__init__(f"model.load is stream, but {why}; set model.load: auto or memory")
        self.why = why


@dataclass
class _Slot:
    """One tensor of the model: the module it sits in, its attribute name, whether it is a
    parameter, what the skeleton holds there (meta for weights, real for computed buffers),
    and where its bytes come from (None: the skeleton's own value, e.g. rotary frequencies)."""
    module: nn.Module
    leaf: str
    is_parameter: bool
    skeleton: torch.Tensor
    source: Optional[TensorEntry]


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, target)


def _meta_like(tensor: torch.Tensor, is_parameter: bool) -> torch.Tensor:
    meta = torch.empty_like(tensor, device="meta")
    return nn.Parameter(meta, requires_grad=tensor.requires_grad) if is_parameter else meta


def _stamp(tensor: torch.Tensor) -> tuple:
    """What changes when a tensor's values are written: its storage or its version counter."""
    return tensor.data_ptr(), tensor._version


class StreamedHandle(ModelHandle):
    """A ModelHandle over a meta-device skeleton whose tensors are read from disk per part."""
    streams = True

    def __init__(self, model, adapter, weight_files, shard_dir: Path, writes: bool = True):
        super().__init__(model, adapter)  # fused experts presented as Linears: on meta too
        # which checkpoint bytes hold each key (an expert's inside a fused tensor)
        self._layout = CheckpointLayout(model, adapter)
        self.shard_dir = Path(shard_dir)
        # Under torchrun rank 0 alone writes the finished blocks; the other ranks read them
        # from shard_dir once written (adopt_finished_blocks), and change nothing on disk.
        self.writes = writes
        for stale in self.shard_dir.glob(".*.tmp-*") if writes else ():  # a write a kill cut
            stale.unlink()
        self._slots = self._map_slots(weight_files)
        self._saved = self._saved_keys()
        self._parts = self._part_keys()
        self._held: Dict[str, int] = {}  # key -> how many open contexts hold it
        self._stamps: Dict[str, tuple] = {}  # key -> its tensor's identity when installed
        # shard file name -> the sha256 of its bytes as written (or verified, when adopted):
        # what the resume state records, so a rerun resumes only from shards it can verify
        self.shard_sha256: Dict[str, str] = {}

    # ---------------------------------------------------------------- where tensors come from
    def _map_slots(self, weight_files) -> Dict[str, _Slot]:
        entries: Dict[str, TensorEntry] = {}
        for file in weight_files:
            entries.update(tensor_entries(file))
        entries = self._layout.read_from(entries)
        prefix = self._layout.prefix
        slots, first_of = {}, {}
        named = [(k, t, True) for k, t in self.model.named_parameters(remove_duplicate=False)]
        named += [(k, t, False) for k, t in self.model.named_buffers(remove_duplicate=False)]
        for key, tensor, is_parameter in named:
            path, _, leaf = key.rpartition(".")
            module = self.model.get_submodule(path)
            source = self._layout.source_in(entries, key)
            if source is None and id(tensor) in first_of:  # tied (lm_head = embeddings)
                source = slots[first_of[id(tensor)]].source
            if source is None and (is_parameter or tensor.is_meta):
                raise NotStreamable(f"the checkpoint has no tensor named {key} (nor without "
                                    f"or with the '{prefix}.' prefix): transformers converts "
                                    "such names on loading, which a streamed model cannot")
            if source is not None and source.shape != tuple(tensor.shape):
                raise LlmcError(f"the weight {key} is {list(source.shape)} in the checkpoint "
                                f"but config.json makes it {list(tensor.shape)}; config.json "
                                "does not belong to these weights")
            first_of.setdefault(id(tensor), key)
            slots[key] = _Slot(module, leaf, is_parameter, tensor, source)
        return slots

    def _saved_keys(self) -> List[str]:
        """What save_pretrained writes: the state dict, each tied tensor once (the first name)."""
        seen, keys = set(), []
        for key, tensor in self.model.state_dict(keep_vars=True).items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                keys.append(key)
        return keys

    def _part_keys(self) -> Dict[str, List[str]]:
        """The saved keys by output shard: pre-block modules, each block, post-block modules,
        anything else; in the model's order, empty parts dropped."""
        def under(paths):
            return [k for k in self._saved if any(k.startswith(p + ".") for p in paths)]
        parts = {"pre": under(self.adapter.pre_blocks)}
        parts.update({f"block {i}": under([self.block_path(i)]) for i in range(self.num_blocks)})
        parts["post"] = under(self.adapter.post_blocks)
        placed = {k for keys in parts.values() for k in keys}
        parts["rest"] = [k for k in self._saved if k not in placed]
        return {part: keys for part, keys in parts.items() if keys}

    def shard_name(self, part: str) -> str:
        number = list(self._parts).index(part) + 1
        return f"model-{number:05d}-of-{len(self._parts):05d}.safetensors"

    # ---------------------------------------------------------------- materialising parts
    def _keys_under(self, paths) -> List[str]:
        """The model's tensor keys inside the modules at `paths` ("" is the whole model)."""
        return [k for k in self._slots if any(not p or k.startswith(p + ".") for p in paths)]

    @contextmanager
    def _bring(self, paths, modules, device) -> Iterator[None]:
        """Read the tensors under `paths` onto `device` for the duration; drop them after."""
        taken = []  # the keys this context holds (all of them, unless a read failed)
        try:
            for key in self._keys_under(paths):
                if key not in self._held:
                    self._install(key, self._load(key, device))
                    self._stamps[key] = _stamp(self._current(key))
                self._held[key] = self._held.get(key, 0) + 1
                taken.append(key)
            yield
            if self.writes:
                self._write_changed_parts([k for k in taken if self._held[k] == 1])
        finally:
            released = False
            for key in taken:
                self._held[key] -= 1
                if not self._held[key]:
                    del self._held[key], self._stamps[key]
                    self._install(key, self._slots[key].skeleton)
                    released = True
            if released:  # a nested context that only shared its parts frees nothing
                release_freed_memory()

    def _write_changed_parts(self, keys) -> None:
        """A part whose tensors changed while held, other than through the runner's
        finish_block, is written out too: modules that rewrite their own weights (Baichuan 2's
        NormHead normalises the head in place on its first forward) keep the change, as they
        do in a model held in memory."""
        changed = {key for key in keys if self._stamps[key] != _stamp(self._current(key))}
        for part, part_keys in self._parts.items():
            if changed.intersection(part_keys):
                self._write_part(part)

    def _load(self, key: str, device) -> torch.Tensor:
        slot = self._slots[key]
        if slot.source is None:
            return slot.skeleton.to(device)
        return read_tensor(slot.source).to(device=device, dtype=slot.skeleton.dtype)

    def _install(self, key: str, tensor: torch.Tensor) -> None:
        slot = self._slots[key]
        if slot.is_parameter:
            if not isinstance(tensor, nn.Parameter):
                tensor = nn.Parameter(tensor, requires_grad=slot.skeleton.requires_grad)
            slot.module._parameters[slot.leaf] = tensor
        else:
            slot.module._buffers[slot.leaf] = tensor

    def whole_on(self, device):
        logger.info("holding the whole model in memory (the streamed engine reads each part "
                    "only while it is used; this step needs all of them at once)")
        return super().whole_on(device)

    # ---------------------------------------------------------------- finished blocks
    def finish_block(self, index: int) -> None:
        """Write block `index` (materialised now, pruned) to its shard; read it from there on.
        A rank that does not write drops it: rank 0 writes the same block."""
        if self.writes:
            self._write_part(f"block {index}")
            prefix = f"{self.block_path(index)}."
            orders = sorted((path, order) for path, order in self.column_orders.items()
                            if path.startswith(prefix))
            if orders:
                self._write_recorded(ORDERS.format(index), orders)

    def _write_recorded(self, name: str, tensors) -> Path:
        """`tensors` written to shard_dir/`name`, its sha256 (hashed as written) recorded for
        the resume state."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        file, digest = self.shard_dir / name, hashlib.sha256()
        write_tensors(file, tensors, digest=digest)
        self.shard_sha256[file.name] = digest.hexdigest()
        return file

    def _write_part(self, part: str) -> None:
        keys = self._parts[part]
        file = self._write_recorded(self.shard_name(part), self._stored(keys, lambda k: (
            self._current(k) if k in self._held else self._load(k, "cpu"))))
        self._point_at(file, part)
        for key in keys:
            if key in self._held:
                self._stamps[key] = _stamp(self._current(key))

    def adopt_finished_blocks(self, count: int, verified: Optional[Dict[str, str]] = None) -> None:
        """Read blocks 0 .. count-1 from the shards an earlier, interrupted run wrote
        (`verified`: their sha256s, which the resume state checked, kept for its next save)."""
        for index in range(count):
            self._adopt(index, self.shard_dir / self.shard_name(f"block {index}"), "done",
                        verified)
            orders = self.shard_dir / ORDERS.format(index)
            if (orders.name in verified) if verified is not None else orders.is_file():
                self.column_orders.update({path: read_tensor(entry) for path, entry in
                                           tensor_entries(orders).items()})
        self.shard_sha256.update(verified or {})

    def _adopt(self, index: int, file: Path, what: str, verified) -> None:
        if not file.is_file():
            raise LlmcError(f"the resume state says block {index} is {what}, but its shard "
                            f"{file} is missing")
        if verified is not None and file.name not in verified:
            raise LlmcError(f"the resume state says block {index} is {what}, but records no "
                            f"sha256 for its shard {file}")
        self._point_at(file, f"block {index}")

    # ---------------------------------------------------------------- a model made smaller
    def reshape_block(self, index: int, change) -> None:
        """`change(block)` on block `index` read in full onto the CPU (llmc.models.slicing makes
        it smaller); the smaller block is written to its own shard (SLICED), read from there on,
        and kept until the run commits (a resumed run reads the blocks it has not finished
        from it). A rank that does not write changes the skeleton alone and reads the shard
        once rank 0 has written it (adopt_reshaped_blocks)."""
        if not self.writes:
            self.reshape_skeleton(index, change)
            return
        path, part = self.block_path(index), f"block {index}"
        self._check_unheld(path)
        for key in self._keys_under([path]):
            self._install(key, self._load(key, "cpu"))
        try:
            change(self.block(index))
            self._remap_slots()
            file = self._write_recorded(SLICED.format(index),
                                        self._stored(self._parts[part], self._current))
            self._point_at(file, part)
        finally:
            for key in self._keys_under([path]):
                self._install(key, self._slots[key].skeleton)
        self.forget_block(index)

    def reshape_skeleton(self, index: int, change) -> None:
        """`change(block)` on block `index`'s skeleton (meta-device tensors: shapes only); its
        new tensors have no source until adopt_reshaped_blocks points them at its shard."""
        self._check_unheld(self.block_path(index))
        change(self.block(index))
        self._remap_slots()
        self.forget_block(index)

    def adopt_reshaped_blocks(self, indices, verified: Optional[Dict[str, str]] = None) -> None:
        """Read blocks `indices` from the smaller blocks' shards (SLICED) a structured pass
        wrote: rank 0 during this run, or an interrupted run (`verified`: their sha256s)."""
        for index in indices:
            self._adopt(index, self.shard_dir / SLICED.format(index), "sliced", verified)
        self.shard_sha256.update(verified or {})

    def forget_blocks(self) -> None:
        """Blocks were removed (llmc.models.slicing): the rest keep their tensors' sources
        under their new names."""
        super().forget_blocks()
        self._check_unheld("")
        self._remap_slots()

    def _check_unheld(self, path: str) -> None:
        if any(not path or key.startswith(path + ".") for key in self._held):
            raise RuntimeError(f"the model's structure changes at '{path}' while a part of it "
                               "is on hand")

    def _remap_slots(self) -> None:
        """The slots after the model's structure changed: a tensor keeps its slot where its
        module, name and shape are the ones it had (under a new key where blocks were
        renumbered); one a change created gets a meta skeleton and no source yet. Then the
        saved keys and the parts anew."""
        by_place = {(id(slot.module), slot.leaf): slot for slot in self._slots.values()}
        named = [(k, t, True) for k, t in self.model.named_parameters(remove_duplicate=False)]
        named += [(k, t, False) for k, t in self.model.named_buffers(remove_duplicate=False)]
        slots = {}
        for key, tensor, is_parameter in named:
            path, _, leaf = key.rpartition(".")
            module = self.model.get_submodule(path)
            slot = by_place.get((id(module), leaf))
            if slot is None or slot.skeleton.shape != tensor.shape:
                slot = _Slot(module, leaf, is_parameter, _meta_like(tensor, is_parameter), None)
            slots[key] = slot
        self._slots = slots
        self._layout = CheckpointLayout(self.model, self.adapter, self._layout.fused,
                                        self._layout.renamed)
        self._saved = self._saved_keys()
        self._parts = self._part_keys()

    def _point_at(self, file: Path, part: str) -> None:
        entries = self._layout.model_named(tensor_entries(file))
        for key in self._parts[part]:
            self._slots[key].source = self._layout.source_in(entries, key)

    def _stored(self, keys, tensor_of) -> List[tuple]:
        """(name, tensor) of `keys` as stored in the checkpoint's own layout (an expert's
        Linears inside their fused tensors, written from the pieces: no copy), each key's
        tensor from `tensor_of`. Every shard is written so: a finished block's is linked into
        the saved model as it is."""
        stored = []
        for name, members, fused in self._layout.stored_layout(keys):
            if not fused:
                stored.append((name, tensor_of(members[0])))
                continue
            pieces = [tensor_of(key) for key in members]
            experts = len({self._layout.places[key].expert for key in members})
            rows = sum(piece.shape[0] for piece in pieces) // experts
            stored.append((name, Pieces((experts, rows, *pieces[0].shape[1:]), pieces)))
        return stored

    def _current(self, key: str) -> torch.Tensor:
        slot = self._slots[key]
        return getattr(slot.module, slot.leaf)

    # ---------------------------------------------------------------- the output directory
    def save_pretrained(self, path: Path) -> None:
        """A Hugging Face directory at `path`: the finished blocks' shards moved in, the other
        parts written from their sources (converted to the model's dtype), index and configs."""
        path = Path(path)
        weight_map, total = {}, 0
        for part, keys in self._parts.items():
            name = self.shard_name(part)
            finished = self.shard_dir / name
            if self._slots[keys[0]].source.file == finished:
                # A second name, not a move: until the run commits, the shard must stay where
                # a resumed run finds it (a kill during the save loses the staging directory).
                _link_or_copy(finished, path / name)
                self._point_at(path / name, part)
                total += sum(self._slots[k].source.nbytes for k in keys)
            else:
                total += write_tensors(path / name, self._stored(
                    keys, lambda k: self._finite_to_save(k, self._load(k, "cpu"))))
            weight_map.update({stored: name for stored, *_ in self._layout.stored_layout(keys)})
        (path / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                              "weight_map": weight_map}, indent=2) + "\n")
        self._save_configs(path)

    def _save_configs(self, path: Path) -> None:
        model, config = self.model, self.model.config
        config.dtype = str(self.dtype).split(".")[1]  # as save_pretrained records it
        config.architectures = [type(model).__name__]
        if getattr(model, "is_remote_code", lambda: False)():
            from transformers.dynamic_module_utils import custom_object_save

            custom_object_save(model, path, config=config)
        config.save_pretrained(path)
        if model.can_generate():
            model.generation_config.save_pretrained(path)
