"""The loss Hessian-vector products of llmc.runner.loss_hessian, one block on the device at a
time (forward-over-reverse), for models that do not fit whole with a double backward.

With h_k = f_k(h_{k-1}, W_k) the hidden states after block k (h_0 the embeddings, which carry no
probe) and L = loss(head(h_n)) a window's mean next-token loss, the product H v for one direction
v_k per block's Linear weights is the derivative along v of the gradient (dL/dW_k)_k:

- forward sweep, block by block: the tangents dh_k = J_h f_k dh_{k-1} + J_W f_k v_k (the block's
  JVP), keeping each block's input h_{k-1} and its tangent dh_{k-1} per window;
- at the head: the adjoint a_n = dL/dh_n and its tangent da_n;
- reverse sweep, block by block from the last: the derivative along (dh_{k-1}, v_k, da_k) of the
  block's VJP (a_{k-1}, dL/dW_k) at (h_{k-1}, W_k, a_k), whose W part is (H v)_k.

Each step is computed by reverse mode twice (a double backward through one block, as the
whole-model product does through the model): the same operations on the same values, so the
products equal the whole-model ones bit for bit (tests/runner/test_blockwise_hessian.py).
Memory: one block with one window's second-order graph, plus every block boundary's hidden
states and tangents per window (2 x blocks x windows x seq_len x hidden in the model's dtype, on
the CPU). Each product reads every block twice: a streamed model reads its checkpoint twice per
Hutchinson probe.
"""
from contextlib import contextmanager
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from loguru import logger
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from ..errors import LlmcError
from .capture import block_output, capture_block_inputs

CPU = torch.device("cpu")


def window_loss(handle, final, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The model's mean next-token loss of one window from the last block's outputs `hidden`
    (as transformers' causal-LM loss: float32 logits, tokens 1.. predicted from 0..)."""
    logits = handle.head_logits(final, hidden)[:, :-1, :].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _block_function(block, names, args, kwargs):
    """f(hidden, weights) of `block` called as the model calls it, with the Linears `names`
    given the `weights` (a tuple in `names` order)."""
    keys = [f"{name}.weight" for name in names]

    def forward(hidden, weights):
        return block_output(functional_call(block, dict(zip(keys, weights)), (hidden, *args),
                                            kwargs))
    return forward


def _leaves_and_output(forward, hidden, weights):
    """([hidden, *weights] as leaves of a graph of their own, the block's output from them)."""
    leaves = [hidden.detach().requires_grad_(True),
              *(w.detach().requires_grad_(True) for w in weights)]
    return leaves, forward(leaves[0], tuple(leaves[1:]))


def _first_order(out, leaves, cotangent):
    """The VJP of `out` with `cotangent` w.r.t. each leaf, its graph kept for a second backward
    (an expert no token of the window reached has no gradient: zero)."""
    return torch.autograd.grad(out, leaves, cotangent, create_graph=True, allow_unused=True,
                               materialize_grads=True)


def _forward_step(forward, hidden, weights, tangents):
    """(f(h, W), its tangent J_h dh + J_W v) of one block `forward` at (`hidden`, `weights`)
    along `tangents` (of the hidden states, then of each weight). By reverse mode twice: the
    VJP with a cotangent c is linear in c, so the gradient of <VJP(c), tangents> in c is the
    JVP. torch's forward mode would need formulas some ops lack (BLOOM's GeLU is an
    autograd.Function); double backward is what the whole-model product uses."""
    with torch.enable_grad():
        leaves, out = _leaves_and_output(forward, hidden, weights)
        cotangent = torch.zeros_like(out, requires_grad=True)
        gradients = _first_order(out, leaves, cotangent)
        total = sum((gradient * tangent).sum() for gradient, tangent in zip(gradients, tangents))
        tangent, = torch.autograd.grad(total, cotangent, allow_unused=True,
                                       materialize_grads=True)
    return out.detach(), tangent


def _reverse_step(forward, hidden, weights, adjoint, tangents, adjoint_tangent):
    """(a_{k-1}, its tangent, the weights' gradient's tangent) of one block `forward` at
    (`hidden`, `weights`) with the adjoint of its output `adjoint`, along `tangents` (of the
    hidden states, then of each weight) and `adjoint_tangent`.

    With phi = <a, f(h, W)>, the tangents are the gradient of
    S = <da, f(h, W)> + <grad phi(h, W), (dh, v)>, by a double backward (the ops' second
    derivatives that the whole-model product uses too; a JVP of the VJP would need forward-mode
    formulas for backward ops, which torch lacks for some, silu_backward among them)."""
    with torch.enable_grad():
        leaves, out = _leaves_and_output(forward, hidden, weights)
        gradients = _first_order(out, leaves, adjoint)
        total = (out * adjoint_tangent).sum()
        for gradient, tangent in zip(gradients, tangents):
            total = total + (gradient * tangent).sum()
        second = torch.autograd.grad(total, leaves, allow_unused=True, materialize_grads=True)
    return gradients[0].detach(), second[0], second[1:]


class BlockwiseHessian:
    """`hvp(vectors)` over `windows` of `handle`'s model, block by block (see the module's
    docstring); `shapes` maps (block index, Linear name) to the weight's shape, block by block."""

    def __init__(self, handle, windows, device):
        self.handle, self.windows, self.device = handle, windows, device
        self.names = [handle.linear_names(index) for index in range(handle.num_blocks)]
        self.shapes: Dict[Tuple[int, str], torch.Size] = {
            (index, name): handle.block(index).get_submodule(name).weight.shape
            for index, names in enumerate(self.names) for name in names}
        self.inputs = capture_block_inputs(handle, windows, device, home=CPU)
        self.embedded = list(self.inputs.hidden)  # block 0's inputs; they carry no tangent

    def hvp(self, vectors: Sequence[torch.Tensor], reduce=None) -> list:
        """H v for one vector per weight (in `shapes` order; any sequence, read one block's at a
        time: a llmc.sparse.hutchinson.Probe draws them as they are read); with `reduce`,
        reduce(v_i, (H v)_i) for each, made as each block's products are (which are not kept)."""
        starts = [0]
        for names in self.names:
            starts.append(starts[-1] + len(names))

        def block_vectors(index):
            return vectors[starts[index]:starts[index + 1]]

        boundaries = self._forward(block_vectors)
        adjoints = self._at_head(boundaries.pop())
        return self._reverse(block_vectors, boundaries, adjoints, reduce)

    def _weights(self, index, block):
        return tuple(block.get_submodule(name).weight.detach() for name in self.names[index])

    def _directions(self, vectors):
        # kept as int8 (+-1): each product with them promotes to the weights' dtype exactly
        return tuple(v.to(self.device) for v in vectors)

    def _forward(self, block_vectors):
        """Per block, per window: (input, its tangent) on the CPU; the last entry is the last
        block's (output, tangent)."""
        handle, device = self.handle, self.device
        states = [(h, torch.zeros_like(h)) for h in self.embedded]
        boundaries = []
        for index in tqdm(range(handle.num_blocks), desc="loss Hessian: forward", leave=False):
            boundaries.append(states)
            with handle.block_on(index, device) as block:
                weights = self._weights(index, block)
                directions = self._directions(block_vectors(index))
                following = []
                for window, (hidden, tangent) in enumerate(states):
                    args, kwargs = self.inputs.call(window, index)
                    forward = _block_function(block, self.names[index], args, kwargs)
                    out, out_tangent = _forward_step(forward, hidden.to(device), weights,
                                                     (tangent.to(device), *directions))
                    following.append((out.to(CPU), out_tangent.to(CPU)))
                states = following
        boundaries.append(states)
        return boundaries

    def _at_head(self, last):
        """Per window: (dL/dh_n, its tangent) on the CPU."""
        adjoints = []
        with self.handle.post_blocks_on(self.device) as final:
            for window, (hidden, tangent) in enumerate(last):
                ids = self.windows[window].to(self.device)
                with torch.enable_grad():
                    leaf = hidden.to(self.device).requires_grad_(True)
                    value = window_loss(self.handle, final, leaf, ids)
                    if not torch.isfinite(value):
                        raise LlmcError(f"the calibration loss is {value.item()}; try "
                                        "model.torch_dtype: float32")
                    adjoint, = torch.autograd.grad(value, leaf, create_graph=True)
                    adjoint_tangent, = torch.autograd.grad(
                        (adjoint * tangent.to(self.device)).sum(), leaf)
                adjoints.append((adjoint.detach().to(CPU), adjoint_tangent.to(CPU)))
        return adjoints

    def _reverse(self, block_vectors, boundaries, adjoints, reduce):
        handle, device = self.handle, self.device
        products = [None] * handle.num_blocks
        for index in tqdm(reversed(range(handle.num_blocks)), total=handle.num_blocks,
                          desc="loss Hessian: reverse", leave=False):
            with handle.block_on(index, device) as block:
                weights = self._weights(index, block)
                directions = self._directions(block_vectors(index))
                total, preceding = None, []
                for window, ((hidden, tangent), (adjoint, adjoint_tangent)) in enumerate(
                        zip(boundaries[index], adjoints)):
                    args, kwargs = self.inputs.call(window, index)
                    forward = _block_function(block, self.names[index], args, kwargs)

                    before, before_tangent, weight_tangents = _reverse_step(
                        forward, hidden.to(device), weights, adjoint.to(device),
                        (tangent.to(device), *directions), adjoint_tangent.to(device))
                    preceding.append((before.to(CPU), before_tangent.to(CPU)))
                    total = (list(weight_tangents) if total is None
                             else [t + p for t, p in zip(total, weight_tangents)])
                total = [t / len(self.windows) for t in total]
                products[index] = (total if reduce is None
                                   else [reduce(v, p) for v, p in zip(directions, total)])
            adjoints = preceding
            boundaries[index] = None  # no longer needed
        return [p for block in products for p in block]


@contextmanager
def blockwise_loss_hessian(handle, windows, device):
    """As llmc.runner.loss_hessian.loss_hessian (the same (shapes, hvp); hvp's `reduce` applied
    per block as its products are made), holding one block on `device` at a time."""
    # Each step differentiates detached copies of its inputs alone (the blocks' other parameters
    # are not recorded); the fused attention kernels have no double backward, the math one has.
    try:
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
            hessian = BlockwiseHessian(handle, windows, device)
            logger.info(f"loss Hessian block by block over {len(windows)} calibration "
                        f"window(s), {len(hessian.shapes)} Linears, on {device}")
            yield hessian.shapes, hessian.hvp
    except torch.cuda.OutOfMemoryError:
        raise LlmcError(f"out of memory on {device} for the loss Hessian of one block with a "
                        "double backward: lower calib.seq_len, or run the traces on the CPU "
                        "(base.device: cpu) with sparse.mixgpt.sensitivity.cache: True and "
                        "reuse save_path/sensitivity.json") from None
