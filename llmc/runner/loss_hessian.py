"""Hessian-vector products of the calibration language-model loss with respect to every block
Linear's weight, for allocation steps that rank Linears by the loss's curvature (MixGPT): the
whole model at once (`sensitivity.blockwise: False`; llmc.runner.blockwise_hessian computes the
same products one block at a time).

Unlike the block loop, this needs the whole model on the device at once, with a double backward
through it: memory is the weights plus, per decoder Linear, its gradient, the gradient's graph,
the probe and the product (about 5x the Linears' weights in the model's dtype), plus one window's
activations kept twice. Gradient checkpointing would not lower it, because the first-order graph
must be kept for the second backward anyway.
"""
from contextlib import contextmanager

import torch
from loguru import logger
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import LlmcError


def calibration_windows(batches, n_windows):
    """The first `n_windows` calibration windows, one (1, T) tensor each."""
    windows = [batch[row:row + 1] for batch in batches for row in range(batch.shape[0])]
    if len(windows) < n_windows:
        raise LlmcError(f"{n_windows} windows were asked for but calibration has only "
                        f"{len(windows)}")
    return windows[:n_windows]


@contextmanager
def loss_hessian(handle, windows, device):
    """Yields (shapes, hvp): `shapes` maps (block index, Linear name) to the weight's shape, in
    block order; `hvp(vectors)` returns H v for one vector per weight (any dtype/device; same
    order), where H is the Hessian of the mean next-token loss over `windows` w.r.t. the block
    weights; `hvp(vectors, reduce)` returns reduce(v_i, (H v)_i) for each instead.

    With one window its first-order graph is built once and reused by every product; with more
    it is rebuilt per window per product, so memory stays at one window's graph. The model is
    back on the CPU, with its requires_grad flags as they were, afterwards."""
    # Filled in once the model is on the device (a streamed model has no weights before).
    weights, tensors = {}, []

    def gradients(window):
        ids = window.to(device)
        loss = handle.model(input_ids=ids, labels=ids, use_cache=False).loss
        if not torch.isfinite(loss):
            raise LlmcError(f"the calibration loss is {loss.item()}; try model.torch_dtype: float32")
        # an expert the router sent no token of the window has no gradient: zero
        return torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True,
                                   materialize_grads=True)

    kept = []

    def hvp(vectors, reduce=None):
        vectors = [v.to(device, w.dtype) for v, w in zip(vectors, tensors)]
        total = None
        for window in windows:
            grads = kept[0] if kept else gradients(window)
            products = torch.autograd.grad(grads, tensors, vectors, retain_graph=bool(kept),
                                           allow_unused=True, materialize_grads=True)
            total = list(products) if total is None else [t + p for t, p in zip(total, products)]
        products = [t / len(windows) for t in total]
        if reduce is None:
            return products
        return [reduce(v, p) for v, p in zip(vectors, products)]

    try:
        with handle.whole_on(device):
            weights.update(handle.block_weights())
            tensors.extend(weights.values())
            flags = {parameter: parameter.requires_grad for parameter in handle.model.parameters()}
            try:
                for parameter in flags:
                    parameter.requires_grad_(False)
                for weight in tensors:
                    weight.requires_grad_(True)
                # The fused attention kernels have no double backward; the plain math one has.
                with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
                    if len(windows) == 1:
                        kept.append(gradients(windows[0]))
                    logger.info(f"loss Hessian over {len(windows)} calibration window(s), "
                                f"{len(tensors)} Linears, on {device}")
                    yield {name: weight.shape for name, weight in weights.items()}, hvp
            finally:
                kept.clear()  # the kept graph goes before the model leaves the device
                for parameter, flag in flags.items():
                    parameter.requires_grad_(flag)
    except torch.cuda.OutOfMemoryError:
        raise LlmcError(
            f"out of memory on {device} for the loss Hessian (the whole model with a double "
            "backward, about 5x the Linears' weights): run it once where it fits (base.device: "
            "cpu, or a larger GPU) with sensitivity.cache: True and reuse "
            "save_path/sensitivity.json, or set sparse.mixgpt.sensitivity.blockwise: True"
        ) from None
