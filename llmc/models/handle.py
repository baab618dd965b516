"""A loaded model and its adapter table as one object: what the runner, the eval and the report
read a model through.

Every move of a part of the model to the compute device goes through the context managers
here (`block_on`, `pre_blocks_on`, `post_blocks_on`, `whole_on`), and each moves its part back
to the CPU when it exits, also on an error. A handle whose weights stay on disk until needed (a
meta-device skeleton filled from safetensors only while a block is on the device) can then
materialise a part on entry and release it on exit without any caller changing.

The same context managers check a part's weights for NaN/inf the first time it is on hand (once
per part: a corrupt checkpoint stops the run naming the parameter, instead of pruning garbage).
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ContextManager, Dict, Iterator, List, Set, Tuple

import torch
import torch.nn as nn

from ..errors import LlmcError
from .adapter import Adapter
from .experts import expert_modules, fuse_experts, unfuse_experts


@dataclass(eq=False)  # compared and hashed by identity, like the modules it holds
class ModelHandle:
    """`model` (kept on the CPU between uses) with the `adapter` table that says where its
    blocks, pre-/post-block modules and input groups are."""
    model: nn.Module
    adapter: Adapter
    # Names of the parts (blocks, pre-/post-block modules) whose weights were found finite.
    _finite: Set[str] = field(default_factory=set, init=False, repr=False)
    _groups: Dict[int, Tuple[Tuple[str, ...], ...]] = field(default_factory=dict, init=False,
                                                            repr=False)
    # {Linear path: column order} where a mask is N:M in a permuted order (RIA's reallocation):
    # filled by the runner, saved beside the model.
    column_orders: Dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        # Fused experts as one Linear per expert matrix for as long as the handle holds the
        # model (llmc.models.experts); save_pretrained writes them fused again.
        if self.adapter.experts:
            unfuse_experts(self._blocks(), self.adapter.experts)

    # Whether the weights stay on disk between uses (llmc.models.stream), not in `model`.
    streams = False

    @property
    def weight_bytes(self) -> int:
        """The bytes of all parameters in the model's dtype (also of a meta-device skeleton)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_blocks(self) -> int:
        return len(self.adapter.get_blocks(self.model))

    def _blocks(self):
        """The blocks, or none where the table's path is not in the model (a handle is built
        before check() names that problem)."""
        try:
            return self.adapter.get_blocks(self.model)
        except AttributeError:
            return []

    def block(self, index: int) -> nn.Module:
        """Decoder block `index` where it lives (the CPU); `block_on` to compute with it."""
        return self.adapter.get_blocks(self.model)[index]

    def block_path(self, index: int) -> str:
        """Block `index`'s module name in the model, e.g. "model.layers.3"."""
        return f"{self.adapter.blocks}.{index}"

    def groups_of(self, index: int) -> Tuple[Tuple[str, ...], ...]:
        """Block `index`'s input groups: names (relative to it) of Linears that read one
        tensor, in forward order (blocks of a MoE model differ: Adapter.groups_of)."""
        if index not in self._groups:
            self._groups[index] = self.adapter.groups_of(self.block(index))
        return self._groups[index]

    def linear_names(self, index: int) -> List[str]:
        """Every Linear of block `index`, relative to it, group by group in forward order."""
        return [name for group in self.groups_of(index) for name in group]

    def experts_of(self, block: nn.Module):
        """(path, UnfusedExperts) of `block` (block `index` of this model)."""
        return expert_modules(block, self.adapter.experts)

    def block_linears(self, index: int) -> Dict[str, nn.Linear]:
        """{name: Linear} of block `index`, in `linear_names(index)` order."""
        block = self.block(index)
        return {name: block.get_submodule(name) for name in self.linear_names(index)}

    def block_weights(self) -> Dict[Tuple[int, str], nn.Parameter]:
        """{(block index, Linear name): weight} for every block Linear, block by block."""
        return {(index, name): linear.weight
                for index in range(self.num_blocks)
                for name, linear in self.block_linears(index).items()}

    def each_block_weight(self) -> Iterator[Tuple[Tuple[int, str], torch.Tensor]]:
        """((block index, Linear name), weight) for every block Linear, each block on the CPU
        while its weights are read (so a streamed model holds one block at a time)."""
        for index in range(self.num_blocks):
            with self.block_on(index, "cpu") as block:
                for name in self.linear_names(index):
                    yield (index, name), block.get_submodule(name).weight

    def forget_block(self, index: int) -> None:
        """Block `index` changed shape (llmc.models.slicing): its groups and finite check anew."""
        self._groups.pop(index, None)
        self._finite.discard(self.block_path(index))

    def reshape_block(self, index: int, change) -> None:
        """`change(block)` makes block `index` smaller (llmc.models.slicing: its Linears
        replaced by narrower ones); its groups and finite check anew. A streamed handle
        materialises the block for it and writes the result out (llmc.models.stream)."""
        change(self.block(index))
        self.forget_block(index)

    def forget_blocks(self) -> None:
        """Blocks were removed: every block's groups and finite check anew."""
        self._groups.clear()
        self._finite = {part for part in self._finite
                        if not part.startswith(f"{self.adapter.blocks}.")}

    def check(self) -> None:
        """Every Linear of every block is in exactly one input group (see Adapter.check)."""
        self.adapter.check(self.model)

    def head_logits(self, final, hidden: torch.Tensor) -> torch.Tensor:
        """The logits from the last block's outputs `hidden`: the post-block modules `final`
        (`post_blocks_on`: final norm, head) in order, then the adapter's `logits` hook, if any
        (Gemma's soft-capping)."""
        for module in final:
            hidden = module(hidden)
        if self.adapter.logits is None:
            return hidden
        return self.adapter.logits(self.model.config, hidden)

    @contextmanager
    def block_on(self, index: int, device) -> Iterator[nn.Module]:
        """Block `index` on `device` for the duration; back on the CPU afterwards."""
        block = self.block(index)
        with self._bring([self.block_path(index)], [block], device):
            self._check_finite([(self.block_path(index), block)])
            yield block

    def pre_blocks_on(self, device) -> ContextManager[List[nn.Module]]:
        """The modules the model runs before block 0 (embeddings, ...), in order, on `device`."""
        return self._present_on(self.adapter.pre_blocks, device)

    def post_blocks_on(self, device) -> ContextManager[List[nn.Module]]:
        """The modules the model runs after the last block (final norm, head), in order, on
        `device`."""
        return self._present_on(self.adapter.post_blocks, device)

    @contextmanager
    def _present_on(self, paths, device) -> Iterator[List[nn.Module]]:
        """The modules of the adapter's `paths` this model has, in order, on `device`."""
        named = self.adapter.present(self.model, paths)
        modules = [module for _, module in named]
        with self._bring([name for name, _ in named], modules, device):
            self._check_finite(named)
            yield modules

    @contextmanager
    def whole_on(self, device) -> Iterator[nn.Module]:
        """The whole model on `device` (whole-model eval, the loss Hessian)."""
        with self._bring([""], [self.model], device):
            self._check_finite(self.adapter.present(self.model, self.adapter.pre_blocks)
                               + [(self.block_path(i), self.block(i))
                                  for i in range(self.num_blocks)]
                               + self.adapter.present(self.model, self.adapter.post_blocks))
            yield self.model

    def _bring(self, paths, modules, device) -> ContextManager[None]:
        """The parts at module `paths` (`modules`) on `device` for the duration: the one place
        weights move. Here they live in the model on the CPU; a streamed handle reads them from
        disk instead (llmc.models.stream)."""
        return _on(device, modules)

    def finish_block(self, index: int) -> None:
        """The runner is done with block `index` (pruned): nothing to do for a model in memory;
        a streamed handle writes it out here."""

    def save_pretrained(self, path) -> None:
        """The model as a Hugging Face directory at `path` (which exists)."""
        self.model.to("cpu")
        for name, param in self.model.named_parameters():
            self._finite_to_save(name, param)
        fuse_experts(self._blocks(), self.adapter.experts)  # transformers' own layout
        try:
            self.model.save_pretrained(path, safe_serialization=True)
        finally:
            unfuse_experts(self._blocks(), self.adapter.experts)

    def release(self) -> nn.Module:
        """The model as its owner had it (llmc.prune hands it back): fused experts in
        transformers' own layout again. The handle is not used afterwards."""
        fuse_experts(self._blocks(), self.adapter.experts)
        return self.model

    def _check_finite(self, named_parts) -> None:
        """NaN/inf in the weights of a part not yet checked is an LlmcError naming the
        parameter: nothing computed from it would mean anything. Read-only; one reduction per
        tensor and one device sync per part."""
        for part, module in named_parts:
            if part in self._finite:
                continue
            params = list(module.named_parameters())
            if params and not bool(torch.stack([all_finite(p) for _, p in params]).all()):
                name, bad = next((n, p) for n, p in params if not all_finite(p))
                raise LlmcError(f"the weight {part}.{name} holds {not_finite(bad)}: "
                                f"{self._why_not_finite(bad)}")
            self._finite.add(part)

    def _finite_to_save(self, name: str, tensor):
        """`tensor` once it is finite. Every weight a run saves is checked, in a block or not
        (the head, the embeddings, the final norm: with evaluation off nothing else reads
        them): else an error, and nothing is saved."""
        if not bool(all_finite(tensor)):
            raise LlmcError(f"the weight {name} holds {not_finite(tensor)}, so no model was "
                            f"saved: {self._why_not_finite(tensor)}")
        return tensor

    def _why_not_finite(self, tensor) -> str:
        source = getattr(self.model.config, "_name_or_path", "") or "the checkpoint"
        if tensor.dtype in (torch.float16, torch.bfloat16) and not torch.isnan(tensor).any():
            return (f"the checkpoint '{source}' holds values beyond {tensor.dtype}'s range, which "
                    "became inf when loaded in it; set model.torch_dtype: float32")
        return f"the checkpoint '{source}' is corrupt; download or convert it again"


def all_finite(tensor, chunk: int = 1 << 24) -> torch.Tensor:
    """torch.isfinite(tensor).all() without a mask of the whole tensor at once (an embedding
    of a large vocabulary would need hundreds of MB for it): chunk by chunk, one bool tensor on
    the tensor's device."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() <= chunk:
        return torch.isfinite(flat).all()
    return torch.stack([torch.isfinite(part).all() for part in flat.split(chunk)]).all()


def not_finite(tensor) -> str:
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    return f"{nan} NaN and {inf} inf value(s) (of {tensor.numel()})"


@contextmanager
def _on(device, modules):
    """`modules` moved to `device` one after the other, and to the CPU in the same order on
    exit. The moves out are inside the try, so a move that fails halfway (out of memory) still
    brings back what already went."""
    try:
        for module in modules:
            module.to(device)
        yield
    finally:
        for module in modules:
            module.to("cpu")
