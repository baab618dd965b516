"""SparseGPT (Frantar & Alistarh, 2023): prune a Linear column by column and, after each column,
update the row's not-yet-visited weights with the Optimal Brain Surgeon correction, so the
layer's output on the calibration inputs changes least.

With H = (2/N) sum X X^T and U the upper Cholesky factor of H^-1, pruning (or quantizing) w_i
costs (w_i - q_i)^2 / U_ii^2 and the best fix of the later weights is -(w_i - q_i) / U_ii * U_i,i:.
Columns go in blocks of `blocksize`: inside a block updates are applied at once per column, to
the rest of the matrix once per block (the same result, far fewer memory passes).
"""
from dataclasses import dataclass

import torch
from loguru import logger

from ..config.typed import setting
from ..errors import ConfigError, LlmcError
from ..registry import METHODS
from .base import Sparsifier
from .masks import layer_threshold_mask
from .quant import MinMaxQuantizer

DAMPING_RETRIES = 3


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float):
    """(U, dead, diag): U is the upper Cholesky factor of H_d^-1, H_d = H + percdamp *
    mean(diag H) * I with dead inputs (H_ii = 0, never active) given H_ii = 1; `dead` marks
    them; `diag` is diag(H_d). `hessian` is not modified (a group's Linears share it)."""
    if not torch.isfinite(hessian).all():
        raise LlmcError("the Hessian has NaN/inf entries: the calibration activations overflowed; "
                        "try model.torch_dtype: float32 or bfloat16")
    dead = torch.diag(hessian) == 0
    diag = torch.arange(hessian.shape[0], device=hessian.device)
    damping = percdamp
    for attempt in range(DAMPING_RETRIES + 1):
        if attempt:  # 10x more damping (from SparseGPT's default when none was asked for)
            damping = damping * 10 if damping > 0 else 0.01
        h = hessian.clone()
        h[dead, dead] = 1
        h[diag, diag] += damping * torch.mean(torch.diag(h))
        lower, info = torch.linalg.cholesky_ex(h)
        # Each step's input is dropped once the next exists: for a 5632-wide Linear each of
        # these matrices is 127 MB, and holding all four would set a streamed run's peak RSS.
        h_diag, h = torch.diag(h).clone(), None
        if info == 0:
            inverse, lower = torch.cholesky_inverse(lower), None
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            inverse = None
            if info == 0 and torch.isfinite(upper).all():
                return upper, dead, h_diag
        lower = upper = None
        if attempt < DAMPING_RETRIES:
            logger.warning(f"Hessian is not positive definite with percdamp {damping:g}; "
                           "retrying with 10x more damping")
    raise LlmcError(f"the Hessian is not positive definite even with percdamp {damping:g}; "
                    "use more calibration windows (calib.n_samples) or a larger sparse.percdamp")


def obs_saliency(block, u_diag, columns):
    """SparseGPT's score of pruning each weight of a column block: w^2 / [H^-1]_mm, with
    [H^-1]_mm = U_mm^2 (U_mm of the columns not yet pruned, as the Cholesky form gives it)."""
    return block ** 2 / u_diag ** 2


def obs_prune(weight, upper, target, blocksize, quantizer=None, saliency=obs_saliency):
    """SparseGPT's pass over fp32 `weight` (rows x columns, modified in place and returned) with
    U = `upper`. Unstructured: per block, prune the lowest int(numel * s) of
    `saliency(block, u_diag, columns)` over the whole block (lazy updates applied). N:M: at every
    M-th column, the N lowest w^2 / U_ii^2 of the next M. With a quantizer, each kept weight is
    rounded to its grid inside the same pass. Returns (weight, the summed OBS loss)."""
    rows, columns = weight.shape
    n, m = target.n_m or (0, 0)
    loss = torch.zeros(rows, device=weight.device)
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        block = weight[:, start:end].clone()
        u = upper[start:end, start:end]
        u_diag = torch.diag(u).reshape(1, -1)
        done = torch.zeros_like(block)
        errors = torch.zeros_like(block)
        if n:
            mask = torch.zeros_like(block, dtype=torch.bool)
        else:
            mask = layer_threshold_mask(saliency(block, u_diag, slice(start, end)),
                                        target.sparsity)
        for i in range(end - start):
            if n and i % m == 0:
                score = obs_saliency(block[:, i:i + m], u_diag[:, i:i + m], None)
                lowest = torch.topk(score, min(n, score.shape[1]), dim=1, largest=False)[1]
                mask.scatter_(1, i + lowest, True)
            w = block[:, i]
            q = w.clone()
            q[mask[:, i]] = 0
            if quantizer is not None:
                q = quantizer.quantize(q)
            done[:, i] = q
            loss += (w - q) ** 2 / u[i, i] ** 2
            error = (w - q) / u[i, i]
            block[:, i:] -= error.unsqueeze(1).matmul(u[i, i:].unsqueeze(0))
            errors[:, i] = error
        weight[:, start:end] = done
        weight[:, end:] -= errors.matmul(upper[start:end, end:])
    return weight, loss.sum().item() / 2


@METHODS.register("SparseGPT")
class SparseGPT(Sparsifier):
    @dataclass
    class Settings(Sparsifier.Settings):
        blocksize: int = setting(128, "columns per lazy-update block (and per unstructured "
                                 "mask); for N:M a multiple of M")
        percdamp: float = setting(0.01, "damping added to diag(H), as a fraction of its mean; "
                                  "raised 10x automatically if H is not positive definite")
        wbits: int = setting(16, "`2`..`8` quantizes the kept weights jointly (per-channel "
                             "asymmetric min-max grid); `16` = no quantization")

        def check(self, weight_cfg):
            if self.blocksize < 1:
                raise ConfigError(f"sparse.blocksize must be >= 1, got {self.blocksize}")
            if self.percdamp < 0:
                raise ConfigError(f"sparse.percdamp must be >= 0, got {self.percdamp}")
            if self.wbits != 16 and not 2 <= self.wbits <= 8:
                raise ConfigError(f"sparse.wbits must be 2..8 (quantize jointly) or 16 (off), "
                                  f"got {self.wbits}")
            n_m = weight_cfg.n_m
            if n_m and self.blocksize % n_m[1]:
                raise ConfigError(f"sparse.blocksize {self.blocksize} must be a multiple of M = "
                                  f"{n_m[1]} for {weight_cfg.sparsity_type} sparsity, so no "
                                  "group of M columns straddles two blocks")

    needs = ("hessian",)
    SCORED = True  # the one-shot saliency below, for a mask refinement (sparse.refine)
    UPDATES = True

    def cost(self, rows, columns):
        """The OBS pass: every column updates the rows x (later columns) rest."""
        return float(rows) * columns * columns

    def prune_group(self, linears, stats, targets):
        """The group's Linears share one Hessian, so U is factored once for all of them."""
        try:
            upper, dead, hessian_diag = inverse_hessian_factor(stats["hessian"],
                                                               self.settings.percdamp)
        except LlmcError as err:
            raise LlmcError(f"{', '.join(linears)}: {err}") from None
        saliency = self.saliency(hessian_diag)
        for name, linear in linears.items():
            weight = linear.weight.data.to(torch.float32, copy=True)
            weight, loss = self.prune_weight(weight, upper, dead, targets[name], saliency)
            if not torch.isfinite(weight).all():
                raise LlmcError(f"{name}: SparseGPT produced NaN/inf weights")
            logger.debug(f"{name}: OBS loss {loss:.4g}")
            linear.weight.data.copy_(weight)

    def prune_weight(self, weight, upper, dead, target, saliency=obs_saliency):
        """`weight` (a float copy, modified in place) pruned with U = `upper`: the wbits grid
        fitted on the dense weight, the `dead` inputs zeroed, then the OBS pass. In the weight's
        own dtype (the method runs it in fp32; a test in float64). Returns (weight, OBS loss)."""
        wbits = self.settings.wbits
        quantizer = MinMaxQuantizer(weight, wbits) if wbits < 16 else None
        weight[:, dead] = 0
        return obs_prune(weight, upper, target, self.settings.blocksize, quantizer, saliency)

    @classmethod
    def quantization_bits(cls, sparse_cfg) -> int:
        return sparse_cfg.settings_for(cls).wbits

    def weight_grid(self, weight):
        """prune_weight's grid: fitted on the dense weight in float32, as it is there."""
        if self.settings.wbits >= 16:
            return None
        quantizer = MinMaxQuantizer(weight.to(torch.float32, copy=True), self.settings.wbits)
        return quantizer.scale, quantizer.zero

    def saliency(self, hessian_diag):
        """The unstructured mask's score (see obs_prune); MixGPT swaps in its own."""
        return obs_saliency

    def prune(self, linear, stats, target):
        self.prune_group({"linear": linear}, stats, {"linear": target})

    def score(self, linear, stats):
        return next(self.group_scores({"linear": linear}, stats))[1]

    def group_scores(self, linears, stats):
        """SparseGPT's saliency w^2 / U_jj^2 of the dense weights over the whole row at once, with
        dead inputs' weights counted as zero: the score DSnoT's reference starts from when its
        initial method is SparseGPT (it never runs the OBS update). U is factored once for the
        group."""
        upper, dead, _ = inverse_hessian_factor(stats["hessian"], self.settings.percdamp)
        u_diag = torch.diag(upper).reshape(1, -1)
        for name, linear in linears.items():
            weight = linear.weight.data.to(torch.float32, copy=True)
            weight[:, dead] = 0
            yield name, obs_saliency(weight, u_diag, None)

    def describe(self) -> dict:
        settings = self.settings
        quantization = ({"wbits": settings.wbits, "grid": "per-channel asymmetric min-max"}
                        if settings.wbits < 16 else None)
        return {"name": "SparseGPT", "blocksize": settings.blocksize,
                "percdamp": settings.percdamp, "quantization": quantization}
