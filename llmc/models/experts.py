"""Fused mixture-of-experts weights presented as one small MLP of Linears per expert.

In transformers 5 the experts of Mixtral, Qwen2-MoE, Qwen3-MoE and DeepSeek-V3 are one module
holding two 3-D parameters, `gate_up_proj` [experts, 2 x intermediate, hidden] (gate rows
first) and `down_proj` [experts, hidden, intermediate], which no Linear hook sees. While a
handle holds the model, each such module is replaced by `UnfusedExperts`: a ModuleList of
`ExpertMLP`s (`<path>.<e>.gate_proj`, `.up_proj`, `.down_proj`, the names transformers 4
used), whose forward is transformers' eager one, expert by expert, so that

- each expert is pruned as its own matrices (gate and up separately, as in the checkpoints'
  own layout), with statistics from the tokens the router sends to it only;
- `routed` counts those tokens, and `kept_inputs` (when asked for) keeps the module's inputs
  so an expert that got too few can be re-measured on all of them (the runner's fallback).

`fuse_experts` puts the original modules back, their parameters rebuilt from the Linears
(pruned or not), before a model is saved: the saved checkpoint has transformers' own layout.
"""
from typing import List

import torch
import torch.nn as nn

from ..errors import LlmcError
from .adapter import Adapter


def is_fused_experts(module: nn.Module) -> bool:
    gate_up = getattr(module, "gate_up_proj", None)
    down = getattr(module, "down_proj", None)
    return (isinstance(gate_up, nn.Parameter) and gate_up.dim() == 3
            and isinstance(down, nn.Parameter) and down.dim() == 3)


def _linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta",
                       dtype=weight.dtype)
    linear.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    return linear


class ExpertMLP(nn.Module):
    """One expert: down(act(gate(x)) * up(x))."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, act_fn):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = _linear(gate), _linear(up), _linear(down)
        self.act_fn = act_fn

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class UnfusedExperts(nn.ModuleList):
    """Stands in for a fused experts module (see the module docstring)."""

    def __init__(self, fused: nn.Module, where: str):
        flags = {flag: getattr(fused, flag, default) for flag, default in
                 (("has_gate", True), ("has_bias", False), ("is_transposed", False),
                  ("is_concatenated", True))}
        if flags != {"has_gate": True, "has_bias": False, "is_transposed": False,
                     "is_concatenated": True}:
            raise LlmcError(f"{where} ({type(fused).__name__}) stores its experts as {flags}; "
                            "llmc reads fused experts with concatenated [gate; up] rows, no "
                            "bias, not transposed (Mixtral, Qwen-MoE, DeepSeek-V3)")
        gate_up, down = fused.gate_up_proj.data, fused.down_proj.data
        half = gate_up.shape[1] // 2
        super().__init__(ExpertMLP(gate_up[e, :half], gate_up[e, half:], down[e], fused.act_fn)
                         for e in range(gate_up.shape[0]))
        # The original module, without its (now copied) weights: put back by `fused()`.
        fused.gate_up_proj = nn.Parameter(torch.empty(0, dtype=gate_up.dtype),
                                          requires_grad=False)
        fused.down_proj = nn.Parameter(torch.empty(0, dtype=down.dtype), requires_grad=False)
        self._original = [fused]  # a list: not a submodule
        # tokens routed to each expert: Python ints (a tensor counted in place could not be called
        # under torch.func's transforms, llmc.runner.blockwise_hessian)
        self.routed = [0] * len(self)
        self.kept_inputs = None  # a list to keep each call's inputs in, when set

    def forward(self, hidden_states, top_k_index, top_k_weights):
        """transformers' eager experts forward (modeling_mixtral.MixtralExperts), expert by
        expert in the same order, through this expert's Linears."""
        if self.kept_inputs is not None:
            self.kept_inputs.append(hidden_states.detach().to("cpu"))
        final = torch.zeros_like(hidden_states)
        by_expert = top_k_index.t()  # [top_k, tokens]: positions in (k, token) order
        for index, expert in enumerate(self):
            top_k_pos, token_idx = torch.where(by_expert == index)
            if token_idx.numel() == 0:
                continue
            self.routed[index] += token_idx.numel()
            out = expert(hidden_states[token_idx]) * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final

    def fused(self) -> nn.Module:
        """The original module, its 3-D parameters rebuilt from these Linears (on the CPU)."""
        original = self._original[0]
        gate_up = torch.stack([torch.cat([e.gate_proj.weight.data, e.up_proj.weight.data])
                               for e in self]).cpu()
        down = torch.stack([e.down_proj.weight.data for e in self]).cpu()
        original.gate_up_proj = nn.Parameter(gate_up, requires_grad=False)
        original.down_proj = nn.Parameter(down, requires_grad=False)
        return original


def expert_modules(block: nn.Module, paths) -> List[tuple]:
    """(path, UnfusedExperts) of `block` at the adapter's expert `paths`."""
    return [(path, module) for path, module in Adapter.present(block, paths)
            if isinstance(module, UnfusedExperts)]


def unfuse_experts(blocks, paths) -> None:
    """Every fused experts module at `paths` (relative to a block) of `blocks`, replaced by its
    UnfusedExperts. A block without one there (a dense layer of a MoE model) is left alone."""
    for index, block in enumerate(blocks):
        for path, module in Adapter.present(block, paths):
            if is_fused_experts(module):
                block.set_submodule(path, UnfusedExperts(module, f"block {index} {path}"))


def fuse_experts(blocks, paths) -> None:
    """The inverse of unfuse_experts: each block's original fused modules back in place."""
    for block in blocks:
        for path, module in expert_modules(block, paths):
            block.set_submodule(path, module.fused())
