"""Hutchinson's estimator of Hessian traces: for a Rademacher vector v (entries +-1),
E[v^T H v] = Tr(H). One Hessian-vector product with v spread over many parameter tensors gives,
per tensor i, v_i^T (H v)_i, whose mean is Tr(H_ii), the trace of that tensor's own diagonal block
(the cross terms v_i^T H_ij v_j, j != i, have mean 0 since v_i and v_j are independent). So one
product per probe estimates every tensor's trace at once.
"""
from typing import Callable, Dict, Hashable, List, Sequence

import torch
from tqdm import tqdm

from ..distributed import World


def rademacher(shape, generator: torch.Generator) -> torch.Tensor:
    """+-1 with equal odds as int8 (a byte per entry), drawn on the CPU so that a seed gives the
    same v on every device."""
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).mul_(2).sub_(1)


def dot(v: torch.Tensor, hv: torch.Tensor) -> float:
    """v . hv, in float64: the sum of hv's entries in float64 times v's (+-1), made in one
    float64 copy of hv (not three temporaries the size of the Linear)."""
    product = hv.detach().to(torch.float64, copy=True)
    return float(torch.sum(product.mul_(v.to(product.device))))


class Probe(Sequence):
    """One probe: a Rademacher vector per shape of `shapes` (in order), drawn from `generator`.
    It keeps the generator's state before each draw and draws a vector again (the same values)
    each time it is read: a probe over a whole model holds one tensor's vector at a time."""

    def __init__(self, shapes: Sequence[torch.Size], generator: torch.Generator):
        self.shapes, self.states = list(shapes), []
        for shape in self.shapes:
            self.states.append(generator.get_state())
            rademacher(shape, generator)  # drawn to move the generator past it

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        generator = torch.Generator().set_state(self.states[index])
        return rademacher(self.shapes[index], generator)


HVP = Callable[[Sequence[torch.Tensor], Callable], List[float]]


def hutchinson_traces(hvp: HVP, shapes: Dict[Hashable, torch.Size], max_iter: int, tol: float,
                      seed: int, world: World = World()):
    """Estimate Tr(H_ii) for every tensor named by a key of `shapes`. `hvp(vectors, reduce)`
    returns [reduce(v_i, (H v)_i)] for the probe `vectors` (one per name, in `shapes` order; int8
    on the CPU, for hvp to place and cast; a Probe), reducing each product as it is made.

    Stops after `max_iter` probes, or earlier once the vector of running means moves less than
    `tol` relatively in one probe (L1 norms), checked from the second probe on.
    Returns ({name: trace}, probes used, converged).

    Under torchrun (`world`, llmc.distributed) the probes go in rounds of N: every rank draws
    each probe's vectors in turn from the one seeded generator (probe p is the same v whatever
    N), computes the product of its own probe of the round, and the ranks' dot products are
    added in probe order under the same stopping test. The estimate and the probe it stops at
    are one process's, bit for bit, for at most N - 1 probes of extra work in the last round."""
    generator = torch.Generator().manual_seed(seed)
    names = list(shapes)
    total = torch.zeros(len(names), dtype=torch.float64)
    previous, probe = None, 0
    with tqdm(total=max_iter, desc="Hutchinson probes") as progress:
        while probe < max_iter:
            count = min(world.size, max_iter - probe)
            mine = None
            for turn in range(count):
                vectors = Probe([shapes[name] for name in names], generator)
                if turn == world.rank:
                    mine = torch.tensor(hvp(vectors, dot), dtype=torch.float64)
            for dots in world.collect(mine)[:count]:
                probe += 1
                progress.update()
                total += dots
                mean = total / probe
                if previous is not None:
                    change = float((mean - previous).abs().sum()
                                   / previous.abs().sum().clamp_min(1e-30))
                    if change < tol:
                        return dict(zip(names, mean.tolist())), probe, True
                previous = mean
    return dict(zip(names, (total / max_iter).tolist())), max_iter, False
