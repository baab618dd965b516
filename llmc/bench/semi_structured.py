"""2:4 models on torch's semi-structured sparse kernels, so that what 2:4 buys on a GPU is a
measured row of `llmc bench-model`, not a claim (docs/performance.md).

A Linear qualifies when every row keeps at most 2 of each 4 consecutive inputs: the pattern
Wanda, SparseGPT and RIA write at `sparsity_type: 2:4`, and the one the kernels compress. Its
weight is swapped for `torch.sparse.to_sparse_semi_structured`'s compressed copy (the kept
values and their 2-bit positions), which F.linear then multiplies on cuSPARSELt (or CUTLASS where
torch lacks cuSPARSELt). These kernels exist only on CUDA, for float16 and bfloat16 (CUTLASS
also float32), and only for shapes that are multiples of the backend's tile: a Linear they
refuse stays dense, and the refusal is recorded."""
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..errors import LlmcError

CHOICES = ("auto", "on", "off")


def is_two_four(weight: torch.Tensor) -> bool:
    """True when each row of `weight` keeps at most 2 non-zeros in every group of 4 consecutive
    columns (and the columns divide into such groups)."""
    rows, columns = weight.shape
    if columns % 4:
        return False
    kept = (weight.reshape(rows, columns // 4, 4) != 0).sum(dim=-1)
    return bool(kept.max() <= 2)


def two_four_linears(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Linear]]:
    """(name, module) of every Linear of `model` whose weight is 2:4, in module order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and is_two_four(module.weight)]


def compress(weight: torch.Tensor) -> torch.Tensor:
    """`weight` in torch's semi-structured layout: cuSPARSELt where this torch has it, CUTLASS
    otherwise (torch.sparse's own choice is cuSPARSELt, which fails without it)."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    forced = SparseSemiStructuredTensor._FORCE_CUTLASS
    SparseSemiStructuredTensor._FORCE_CUTLASS = forced or not backend_has_cusparselt()
    try:
        return to_sparse_semi_structured(weight)
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = forced


def backend_has_cusparselt() -> bool:
    return bool(getattr(torch.backends, "cusparselt", None)
                and torch.backends.cusparselt.is_available())


def backend_name() -> str:
    return "cuSPARSELt" if backend_has_cusparselt() else "CUTLASS"


def kernels_for(choice: str, device: torch.device) -> Optional[Callable]:
    """The weight converter bench-model measures 2:4 models with, or None: `auto` uses the
    kernels on CUDA and skips them elsewhere, `on` requires CUDA, `off` never uses them."""
    if choice not in CHOICES:
        raise LlmcError(f"bench-model: 2:4 kernels '{choice}': give one of {', '.join(CHOICES)}")
    if choice == "on" and device.type != "cuda":
        raise LlmcError(f"bench-model: --two-four-kernels on needs a CUDA device (torch's "
                        f"semi-structured kernels run only there) and this run is on {device}; "
                        "give --device cuda, or leave it at auto")
    return compress if choice != "off" and device.type == "cuda" else None


def to_kernels(model: torch.nn.Module, convert: Callable = compress) -> Dict[str, object]:
    """Every 2:4 Linear of `model` given `convert(weight)` as its weight, in place; returns how
    many were converted and, for each one the converter refused, its reason."""
    converted, refused = 0, {}
    with torch.no_grad():
        for name, linear in two_four_linears(model):
            try:
                compressed = convert(linear.weight.detach())
            except (RuntimeError, ValueError, TypeError) as err:  # dtype, shape, device
                refused[name] = " ".join(str(err).split())[:200]
                continue
            linear.weight = torch.nn.Parameter(compressed, requires_grad=False)
            converted += 1
    return {"linears": converted, "refused": refused}
