"""Depth pruning: whole decoder blocks removed.

ShortGPT (Men et al. 2024, icip-cas/ShortGPT): a block's Block Influence is 1 - cos(h_in, h_out)
per token, averaged over every calibration token; the `remove` blocks of least influence go.
As the reference's code: the hidden states are those transformers' output_hidden_states gives,
so the last block's output is taken after the final norm; a token whose cosine is NaN (a zero
vector) counts 0.5.

Contiguous (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"): the
`remove` consecutive blocks l .. l+n-1 whose removal joins the most similar hidden states, l
minimising the angular distance arccos(cos(h_l, h_l+n)) / pi between the inputs of blocks l
and l+n, averaged over the windows' last tokens (the paper's section 3.2; `angular_tokens: all`
averages over every token). The last block is always kept, as in the paper.
"""
from dataclasses import dataclass
from typing import Dict, List

import torch

from ..config.typed import setting
from ..errors import ConfigError, LlmcError
from .base import Structure, check_amount, count_of, register

TOKENS = ("last", "all")


def cosines(hidden_a: torch.Tensor, hidden_b: torch.Tensor) -> torch.Tensor:
    """cos(a_t, b_t) per token t (float32; NaN where a vector is zero becomes 0.5, as the
    ShortGPT reference's nan_to_num)."""
    a = hidden_a.reshape(-1, hidden_a.shape[-1]).float()
    b = hidden_b.reshape(-1, hidden_b.shape[-1]).float()
    similarity = (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return similarity.nan_to_num(nan=0.5)


def block_influence(hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> torch.Tensor:
    """ShortGPT's Block Influence per token: 1 - cos(h_in, h_out)."""
    return 1 - cosines(hidden_in, hidden_out)


def angular_distance(hidden_a: torch.Tensor, hidden_b: torch.Tensor) -> torch.Tensor:
    """arccos(cos(a, b)) / pi per token, in [0, 1]."""
    return torch.arccos(cosines(hidden_a, hidden_b).clamp(-1, 1)) / torch.pi


def least(values: List[float], count: int) -> List[int]:
    """The indices of the `count` smallest values (ties: the lower index), ascending."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return sorted(order[:count])


@dataclass
class DepthCfg:
    remove: float = setting(0.25, "blocks removed: a count (>= 1) or a fraction of the "
                            "model's blocks (< 1, rounded)")


class _Depth(Structure):
    HIDDEN = True

    def __init__(self, sparse_cfg):
        super().__init__(sparse_cfg)
        self.sums: Dict[int, float] = {}  # per index: the measure summed over tokens
        self.tokens: Dict[int, int] = {}

    def _add(self, index: int, values: torch.Tensor) -> None:
        self.sums[index] = self.sums.get(index, 0.0) + float(values.double().sum())
        self.tokens[index] = self.tokens.get(index, 0) + values.numel()

    def start(self, num_blocks: int) -> None:
        self.count(num_blocks)  # a count out of range is an error before the pass

    def means(self, count: int) -> List[float]:
        return [self.sums[i] / self.tokens[i] for i in range(count)]

    def totals(self):
        keys = sorted(self.sums)
        return torch.tensor([self.sums[k] for k in keys] + [float(self.tokens[k]) for k in keys],
                            dtype=torch.float64)

    def take_totals(self, totals):
        keys = sorted(self.sums)
        values = totals.tolist()
        self.sums = dict(zip(keys, values[:len(keys)]))
        self.tokens = {k: int(v) for k, v in zip(keys, values[len(keys):])}

    def count(self, num_blocks: int) -> int:
        n = count_of(self.settings.depth.remove, num_blocks, "sparse.depth.remove")
        if n >= num_blocks:
            raise LlmcError(f"sparse.depth.remove {self.settings.depth.remove} removes {n} of "
                            f"the model's {num_blocks} blocks; at least one must remain")
        return n


@register("ShortGPT")
class ShortGPT(_Depth):
    @dataclass
    class Settings(Structure.Settings):
        depth: DepthCfg = setting(factory=DepthCfg, doc="how many blocks to remove")

        def check(self, weight_cfg):
            check_amount(self.depth.remove, "sparse.depth.remove")

    def observe(self, index, batch, hidden_in, hidden_out):
        self._add(index, block_influence(hidden_in, hidden_out))

    def blocks_to_remove(self, num_blocks):
        self.influence = self.means(num_blocks)
        return least(self.influence, self.count(num_blocks))

    def record(self):
        return {"block_influence": self.influence}


@register("Contiguous")
class Contiguous(_Depth):
    @dataclass
    class Settings(Structure.Settings):
        depth: DepthCfg = setting(factory=DepthCfg, doc="how many blocks to remove")
        angular_tokens: str = setting("last", "the tokens Contiguous's angular distance is "
                                      "averaged over: `last` (each window's last token, as the "
                                      "paper) or `all`")

        def check(self, weight_cfg):
            check_amount(self.depth.remove, "sparse.depth.remove")
            if self.angular_tokens not in TOKENS:
                raise ConfigError(f"sparse.angular_tokens '{self.angular_tokens}' must be one "
                                  f"of {', '.join(TOKENS)}")

    def __init__(self, sparse_cfg):
        super().__init__(sparse_cfg)
        self.span = None  # n, known once the pass starts (it needs the block count)
        self.kept: Dict[tuple, torch.Tensor] = {}  # (block, batch) -> its inputs, until used

    def observe(self, index, batch, hidden_in, hidden_out):
        if self.span is None:
            raise LlmcError("Contiguous: the block count was not given before the pass")
        if self.settings.angular_tokens == "last":
            hidden_in = hidden_in[..., -1:, :]
        earlier = self.kept.pop((index - self.span, batch), None)
        if earlier is not None:
            self._add(index - self.span, angular_distance(earlier, hidden_in.to(earlier.device)))
        self.kept[(index, batch)] = hidden_in.to("cpu", copy=True)

    def start(self, num_blocks: int) -> None:
        self.span = self.count(num_blocks)
        if self.span > num_blocks - 1:
            raise LlmcError(f"sparse.depth.remove: Contiguous keeps the last block, so it can "
                            f"remove at most {num_blocks - 1} of {num_blocks}")

    def blocks_to_remove(self, num_blocks):
        self.kept.clear()
        n = self.span
        if n == 0:
            self.distance = []
            return []
        # starts l = 0 .. L-1-n: the inputs of blocks l and l+n, block l+n <= L-1 kept
        self.distance = self.means(num_blocks - n)
        start = least(self.distance, 1)[0]
        return list(range(start, start + n))

    def record(self):
        return {"angular_distance": self.distance}
