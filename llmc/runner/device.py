"""Where things run: the compute device, and moving nested inputs onto it."""
from typing import Optional

import torch
from loguru import logger

from ..distributed import env_local_rank, env_local_world_size, env_world_size
from ..errors import LlmcError


def resolve_device(name: str) -> torch.device:
    """The device `base.device` names; under torchrun, `auto` and `cuda` are each rank's own GPU
    (cuda:LOCAL_RANK)."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda") and env_world_size() > 1:
        name = f"cuda:{env_local_rank()}"
    elif name.startswith("cuda:") and env_local_world_size() > 1:
        raise LlmcError(f"base.device is {name}, which puts every torchrun rank of this machine "
                        "on one GPU; set base.device: auto (or cuda): each rank then uses "
                        "cuda:LOCAL_RANK")
    if name == "auto":
        return torch.device("cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LlmcError(f"base.device is {name} but no CUDA GPU is visible; set base.device: auto "
                        "or cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise LlmcError(f"base.device is {name} but only {torch.cuda.device_count()} CUDA GPU(s) "
                        f"are visible (cuda:0 to cuda:{torch.cuda.device_count() - 1}); choose one "
                        "of them or set base.device: auto")
    return device


def to_device(value, device):
    """Tensors inside tuples / lists / dicts moved to `device`; other values unchanged."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def activation_home(offload, device, activation_bytes: int) -> torch.device:
    """Where calibration activations wait between blocks: the device, unless they would take
    more than half of its free memory (or the user says offload: true)."""
    if device.type == "cpu" or offload is True:
        return torch.device("cpu")
    if offload is False:
        return device
    free, _ = torch.cuda.mem_get_info(device)
    if activation_bytes > free // 2:
        logger.info(f"activations ({activation_bytes / 2**30:.1f} GiB) kept on CPU: they would "
                    f"not fit half of the {free / 2**30:.1f} GiB free on {device}")
        return torch.device("cpu")
    return device


def free_memory(device) -> int:
    """Bytes that can still be allocated on `device` (the CPU: MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def current_rss() -> int:
    """This process's resident memory now, in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> None:
    """Start this process's peak-RSS count afresh (Linux: VmHWM), so `peak_rss_since_reset`
    measures a phase (the block loop and eval) without loading's transient copies."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_since_reset() -> Optional[int]:
    """The peak RSS since reset_peak_rss (or since the start), in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports KiB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
