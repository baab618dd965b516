"""The weight quantizer SparseGPT uses for joint sparse + quantized pruning: GPTQ's per-output-
channel, asymmetric min-max grid, fitted once on the dense weight.

The grid always contains 0 exactly (the range is widened to include it and the zero point is an
integer), so a pruned weight stays exactly 0 after quantization.
"""
import torch


class MinMaxQuantizer:
    """`bits`-bit grid per row of `weight`: scale = (max - min) / (2^bits - 1),
    zero = round(-min / scale), with min <= 0 <= max."""

    def __init__(self, weight: torch.Tensor, bits: int):
        self.levels = 2 ** bits - 1
        zeros = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        low = torch.minimum(weight.min(dim=1)[0], zeros)
        high = torch.maximum(weight.max(dim=1)[0], zeros)
        empty = (low == 0) & (high == 0)  # an all-zero row: any grid works; GPTQ uses [-1, 1]
        low[empty], high[empty] = -1, 1
        self.scale = ((high - low) / self.levels).reshape(-1, 1)
        self.zero = torch.round(-low / self.scale.flatten()).reshape(-1, 1)

    def quantize(self, column: torch.Tensor) -> torch.Tensor:
        """Round one column (one value per row) to each row's grid; returns dequantized values."""
        column = column.reshape(-1, 1)
        q = torch.clamp(torch.round(column / self.scale) + self.zero, 0, self.levels)
        return (self.scale * (q - self.zero)).flatten()
