"""MixGPT (Shao, Liu & Qian, ICASSP 2024): sensitivity-aware mixed sparsity.

1. Sensitivity: the trace of the Hessian of the calibration loss w.r.t. each Linear's weight,
   by Hutchinson's estimator (llmc.sparse.hutchinson), divided by the weight's size (the
   average trace, paper eq. 6) unless `normalize: false`. A layer's is the sum of its Linears'.
2. Allocation (paper Algorithm 1): units ranked by sensitivity get densities evenly spaced from
   L = 1 - p - alpha (least sensitive) to R = 2(1 - p) - L (most), so sparsities run from p + alpha
   down to p - alpha with mean p. Tied sensitivities share their mean rank, which keeps the mean.
3. Pruning: SparseGPT with each Linear's own sparsity, scoring weights by the Improved Saliency
   Criterion w^2 (H_mm + 1/[H^-1]_mm) instead of OBS's w^2/[H^-1]_mm (N:M masks keep OBS).
"""
import time
from dataclasses import dataclass

import numpy as np
from loguru import logger

from ..config.typed import setting
from ..errors import ConfigError, LlmcError
from ..registry import METHODS
from .allocation import Target, UnitPlan
from .hutchinson import hutchinson_traces
from .sparsegpt import SparseGPT, obs_saliency

GRANULARITIES = ("layer", "linear")
SALIENCIES = ("isc", "obs")
SENSITIVITY_FILE = "sensitivity.json"
# The cached record's layout: per-Linear lists aligned with "linears", [block index, name] pairs.
# Part of the cache key, so a file written in another layout is never misread.
RECORD_LAYOUT = "per-linear lists v2"


def average_ranks(values) -> np.ndarray:
    """0-based ascending ranks; tied values all get the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and ordered[end + 1] == ordered[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2
        start = end + 1
    return ranks


def mixed_sparsity(sensitivities, sparsity: float, alpha: float) -> np.ndarray:
    """Algorithm 1: the sparsity of each unit from its rank by sensitivity."""
    count = len(sensitivities)
    if count == 1:
        return np.array([sparsity])
    low = 1 - sparsity - alpha
    high = 2 * (1 - sparsity) - low
    density = low + average_ranks(sensitivities) * (high - low) / (count - 1)
    return 1 - density


def weighted_to(sparsities, sizes, sparsity: float) -> np.ndarray:
    """`sparsities` shifted by one constant so that the size-weighted mean is `sparsity`."""
    sparsities, sizes = np.asarray(sparsities, dtype=np.float64), np.asarray(sizes, np.float64)
    return sparsities + (sparsity - np.dot(sizes, sparsities) / sizes.sum())


def isc_saliency(hessian_diag):
    """The Improved Saliency Criterion as an obs_prune score: w^2 (H_mm + 1/[H^-1]_mm)."""
    def saliency(block, u_diag, columns):
        return block ** 2 * (hessian_diag[columns].reshape(1, -1) + 1 / u_diag ** 2)
    return saliency


@dataclass
class SensitivityCfg:
    n_samples: int = setting(1, "how many calibration windows (the first ones) the loss Hessian "
                             "is taken over; at most `calib.n_samples`")
    max_iter: int = setting(50, "Hutchinson probes at most")
    tol: float = setting(1e-3, "stop once the vector of running trace means moves less than "
                         "this in one probe, relatively (L1)")
    normalize: bool = setting(True, "the average trace Tr(H)/numel (paper eq. 6); `False`: the "
                              "trace")
    cache: bool = setting(True, "keep the traces in `save_path/sensitivity.json` and reuse them "
                          "when model weights, windows and these settings match")
    seed: int = setting(0, "seeds the Rademacher probes; in [0, 2^32)")
    blockwise: bool = setting(True, "Hessian-vector products one block on the device at a time "
                              "(forward-over-reverse: a few blocks' memory, the same traces); "
                              "`False`: the whole model at once with a double backward (~5x "
                              "its Linears' weights; faster where that fits)")


@dataclass
class MixGptCfg:
    alpha: float = setting(0.1, "sparsities run from p - alpha (most sensitive unit) to p + alpha "
                           "(least); p +- alpha must stay in [0, 1)")
    granularity: str = setting("layer", "`layer` (a layer's sensitivity is the sum of its "
                               "Linears') or `linear` (each Linear ranked on its own)")
    weighted: bool = setting(False, "unstructured: shift the plan so the parameter-weighted mean "
                             "sparsity is exactly p (the paper's plan has mean p over units)")
    saliency: str = setting("isc", "`isc`, the paper's w^2 (H_mm + 1/[H^-1]_mm), or `obs`, "
                            "SparseGPT's w^2/[H^-1]_mm; N:M masks use OBS either way")
    sensitivity: SensitivityCfg = setting(factory=SensitivityCfg,
                                          doc="the Hessian traces (Hutchinson)")


@METHODS.register("MixGPT")
class MixGPT(SparseGPT):
    """SparseGPT's pass with MixGPT's allocation and saliency: its settings are SparseGPT's
    (blocksize, percdamp, wbits) and `mixgpt`."""

    @dataclass
    class Settings(SparseGPT.Settings):
        mixgpt: MixGptCfg = setting(factory=MixGptCfg, doc="sensitivity-aware mixed sparsity")

        def check(self, weight_cfg):
            super().check(weight_cfg)
            mix, sens = self.mixgpt, self.mixgpt.sensitivity
            if mix.granularity not in GRANULARITIES:
                raise ConfigError(f"sparse.mixgpt.granularity '{mix.granularity}' must be one "
                                  f"of {', '.join(GRANULARITIES)}")
            if mix.saliency not in SALIENCIES:
                raise ConfigError(f"sparse.mixgpt.saliency '{mix.saliency}' must be one of "
                                  f"{', '.join(SALIENCIES)}")
            n_m = weight_cfg.n_m
            p = n_m[0] / n_m[1] if n_m else weight_cfg.sparsity
            if not (mix.alpha >= 0 and p - mix.alpha >= 0 and p + mix.alpha < 1):
                raise ConfigError(f"sparse.mixgpt.alpha {mix.alpha} must be >= 0 and keep "
                                  f"sparsity {p:g} +- alpha within [0, 1); lower it")
            if mix.weighted and n_m:
                raise ConfigError("sparse.mixgpt.weighted applies to unstructured sparsity; "
                                  "remove it")
            if sens.n_samples < 1 or sens.max_iter < 1 or sens.tol < 0:
                raise ConfigError(f"sparse.mixgpt.sensitivity: n_samples and max_iter must be "
                                  f">= 1 and tol >= 0, got {sens.n_samples}, {sens.max_iter}, "
                                  f"{sens.tol}")
            if not 0 <= sens.seed < 2 ** 32:  # as base.seed, so one seed works everywhere
                raise ConfigError(f"sparse.mixgpt.sensitivity.seed must be an integer in "
                                  f"[0, 2^32), got {sens.seed}")

    SCORED = False  # its saliency is the OBS pass's own; no one-shot score is defined

    def __init__(self, sparse_cfg):
        super().__init__(sparse_cfg)
        self.sensitivity_record = None

    @classmethod
    def check_calibration(cls, cfg, calib_cfg):
        windows = cfg.settings_for(cls).mixgpt.sensitivity.n_samples
        if windows > calib_cfg.n_samples:
            raise ConfigError(f"sparse.mixgpt.sensitivity.n_samples {windows} is more than the "
                              f"{calib_cfg.n_samples} calibration windows (calib.n_samples)")

    def measure_sensitivity(self, calibration) -> dict:
        """Hessian traces of every block Linear, cached in save_path/sensitivity.json."""
        sens = self.settings.mixgpt.sensitivity

        def compute():
            start = time.perf_counter()
            with calibration.loss_hessian(sens.n_samples, sens.blockwise) as (shapes, hvp):
                # under torchrun the probes are shared out (the estimate is one process's)
                traces, probes, converged = hutchinson_traces(hvp, shapes, sens.max_iter,
                                                              sens.tol, sens.seed,
                                                              calibration.world)
            linears = list(shapes)  # (block index, Linear name), as the runner names them
            if not np.isfinite(list(traces.values())).all():
                raise LlmcError("the Hessian traces are not finite; try model.torch_dtype: "
                                "float32")
            return {"linears": [[index, name] for index, name in linears],
                    "traces": [traces[linear] for linear in linears],
                    "numel": [int(np.prod(shapes[linear])) for linear in linears],
                    "probes": probes, "converged": converged,
                    "seconds": time.perf_counter() - start}

        if sens.cache:  # the key digests every block weight: only worth it for the cache
            key = {"estimator": "hutchinson", "record": RECORD_LAYOUT,
                   **calibration.fingerprint(sens.n_samples),
                   "n_samples": sens.n_samples, "max_iter": sens.max_iter, "tol": sens.tol,
                   "seed": sens.seed}
            record, reused = calibration.cached(SENSITIVITY_FILE, key, compute)
        else:
            record, reused = compute(), False
        self.sensitivity_record = {**{k: record[k] for k in ("probes", "converged", "seconds")},
                                   "n_samples": sens.n_samples, "blockwise": sens.blockwise,
                                   "reused": reused}
        logger.info(f"Hessian traces: {record['probes']} probes "
                    f"({'converged' if record['converged'] else 'max_iter reached'}), "
                    f"{record['seconds']:.1f} s{' (from the cache)' if reused else ''}")
        return record

    def allocate(self, weight_cfg, calibration):
        mix = self.settings.mixgpt
        record = self.measure_sensitivity(calibration)
        sensitivity, sizes = {}, {}
        for (index, linear), trace, numel in zip(record["linears"], record["traces"],
                                                 record["numel"]):
            unit = (index, linear if mix.granularity == "linear" else None)
            value = trace / numel if mix.sensitivity.normalize else trace
            sensitivity[unit] = sensitivity.get(unit, 0.0) + value
            sizes[unit] = sizes.get(unit, 0) + numel
        units = list(sensitivity)
        scores = [sensitivity[u] for u in units]
        if weight_cfg.n_m:
            n, m = weight_cfg.n_m
            unit_n = np.round(mixed_sparsity(scores, n / m, mix.alpha) * m).astype(int)
            targets = [Target(k / m, (int(k), m)) for k in unit_n]
        else:
            sparsity = mixed_sparsity(scores, weight_cfg.sparsity, mix.alpha)
            if mix.weighted:
                sparsity = weighted_to(sparsity, [sizes[u] for u in units], weight_cfg.sparsity)
            sparsity[(sparsity < 0) & (sparsity > -1e-12)] = 0  # p - alpha = 0, up to rounding
            if sparsity.min() < 0 or sparsity.max() >= 1:
                raise LlmcError(f"sparse.mixgpt: the plan's sparsities run from "
                                f"{sparsity.min():.4f} to {sparsity.max():.4f}, outside [0, 1); "
                                "lower alpha (or turn weighted off)")
            targets = [Target(float(s)) for s in sparsity]
        plan = UnitPlan("mixgpt", dict(zip(units, targets)), "sensitivity", scores,
                        {"granularity": mix.granularity, "alpha": mix.alpha,
                         "weighted": mix.weighted, "normalize": mix.sensitivity.normalize})
        logger.info(f"MixGPT sensitivity per {mix.granularity}: "
                    f"{np.array2string(np.array(scores), precision=4)}")
        logger.info(f"MixGPT sparsity per {mix.granularity}: {[str(t) for t in targets]} "
                    f"(mean {np.mean(plan.sparsities()):.4f})")
        return plan

    def saliency(self, hessian_diag):
        return isc_saliency(hessian_diag) if self.settings.mixgpt.saliency == "isc" else obs_saliency

    def describe(self) -> dict:
        return {**super().describe(), "name": "MixGPT", "saliency": self.settings.mixgpt.saliency,
                "sensitivity": self.sensitivity_record}
