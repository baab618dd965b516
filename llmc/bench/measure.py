"""What one saved model costs to run: prefill and greedy-decode tokens/s at given batch sizes,
the memory it takes, its parameters (and how many are non-zero) and its checkpoint's bytes.

Timings are medians of `repeats` runs after one warm-up, on random token ids (seeded: the same
ids for every model), under torch.inference_mode. Decode tokens/s is the new tokens over the
generate() time less the prefill time of the same batch, so it counts the token-by-token steps
alone; generate() is told to produce exactly `new_tokens` (no early stop at an end token).
Given a weight converter (llmc.bench.semi_structured, CUDA only), the model's 2:4 Linears run on
the semi-structured kernels, and the figures record how many did and how far the logits moved."""
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from loguru import logger

from ..errors import LlmcError
from ..models.freed_memory import release_freed_memory
from ..runner.device import current_rss, peak_rss_since_reset, reset_peak_rss
from . import semi_structured

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass
class Settings:
    prompt: int = 512
    new_tokens: int = 128
    batches: List[int] = field(default_factory=lambda: [1, 8])
    repeats: int = 3
    seed: int = 0
    dtype: str = "auto"  # auto (as saved), float16, bfloat16 or float32
    two_four_kernels: str = "auto"  # semi_structured.kernels_for: auto (CUDA), on, off


def checkpoint_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir()
               if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def load(directory: Path, device: torch.device, dtype: str = "auto"):
    """The saved model at `directory` in `dtype` (auto: the one it was saved in), on `device`,
    in eval mode; one error line for a directory that holds no loadable model."""
    from transformers import AutoModelForCausalLM

    if not (directory / "config.json").is_file() or not checkpoint_bytes(directory):
        raise LlmcError(f"bench-model: {directory} is not a saved model (no config.json and "
                        "weight files); give transformed_model/ directories or checkpoints")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            **_packed_loading(directory))
    except Exception as err:  # transformers raises many kinds for a broken directory
        raise LlmcError(f"bench-model: {directory} does not load as a causal LM "
                        f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    return model.to(device).eval()


def _packed_loading(directory: Path) -> dict:
    """from_pretrained's arguments for a packed model (save.format: compressed-tensors): its
    weights dequantized as they load, since no low-bit kernel runs them here: the bench measures
    its checkpoint bytes, and its speed and memory as the float model it dequantizes to."""
    import json

    quantization = json.loads((directory / "config.json").read_text()).get(
        "quantization_config") or {}
    if quantization.get("quant_method") != "compressed-tensors":
        return {}
    try:
        from transformers import CompressedTensorsConfig
    except ImportError:  # transformers before compressed-tensors support
        return {}
    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


def _timed(call, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _median_seconds(call, device, repeats: int) -> float:
    call()  # warm-up: kernels chosen, caches filled
    return statistics.median(_timed(call, device) for _ in range(repeats))


def _timings(model, batch: int, device: torch.device, settings: Settings):
    """(prefill seconds, generate seconds) of `batch` random prompts (seeded per batch size)."""
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(settings.seed + batch)
    ids = torch.randint(0, vocab, (batch, settings.prompt), generator=generator).to(device)
    with torch.inference_mode():
        prefill = _median_seconds(lambda: model(ids, use_cache=False), device, settings.repeats)
        generate = _median_seconds(lambda: model.generate(
            ids, max_new_tokens=settings.new_tokens, min_new_tokens=settings.new_tokens,
            do_sample=False, pad_token_id=0), device, settings.repeats)
    return prefill, generate


def _on_kernels(model, convert, device: torch.device, settings: Settings) -> Dict[str, object]:
    """`model`'s 2:4 Linears swapped for `convert(weight)` in place, with what changed: how many
    Linears run on the kernels, the reasons of those refused, and the largest logit difference
    the swap made on one seeded prompt (the kernels sum in another order than a dense matmul)."""
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(settings.seed)
    ids = torch.randint(0, vocab, (1, min(settings.prompt, 64)), generator=generator).to(device)
    with torch.inference_mode():
        before = model(ids, use_cache=False).logits.float()
    swapped = semi_structured.to_kernels(model, convert)
    with torch.inference_mode():
        after = model(ids, use_cache=False).logits.float()
    name = (semi_structured.backend_name() if convert is semi_structured.compress
            else getattr(convert, "__name__", "converter"))
    for linear, reason in list(swapped["refused"].items())[:1]:
        logger.warning(f"2:4 kernels: {len(swapped['refused'])} Linear(s) stay dense, e.g. "
                       f"{linear}: {reason}")
    return {"kernels": f"2:4 {name}", "kernel_linears": swapped["linears"],
            "kernel_refused": swapped["refused"],
            "kernel_logits_max_abs_diff": float((after - before).abs().max()),
            "logits_max_abs": float(before.abs().max())}


def measure(directory, device: torch.device, settings: Settings,
            convert: Optional[Callable] = None) -> Dict[str, object]:
    """The figures of the model saved at `directory` (see the module doc); with `convert`, of
    the same model with its 2:4 Linears on the kernels `convert` makes."""
    directory = Path(directory)
    release_freed_memory()
    before = current_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    model = load(directory, device, settings.dtype)
    params = list(model.parameters())
    figures: Dict[str, object] = {
        "path": str(directory), "dtype": str(params[0].dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in params),
        "nonzero_parameters": sum(int(torch.count_nonzero(p)) for p in params),
        "checkpoint_bytes": checkpoint_bytes(directory),
        "two_four_linears": len(semi_structured.two_four_linears(model)), "seconds": {}}
    del params
    if convert is not None:
        figures.update(_on_kernels(model, convert, device, settings))
    if device.type == "cuda":  # what it holds while it runs: its weights (as converted) and more
        torch.cuda.reset_peak_memory_stats(device)
    for batch in settings.batches:
        prefill, generate = _timings(model, batch, device, settings)
        figures["seconds"][f"prefill_bs{batch}"] = prefill
        figures["seconds"][f"generate_bs{batch}"] = generate
        figures[f"prefill_tokens_per_s_bs{batch}"] = batch * settings.prompt / prefill
        figures[f"decode_tokens_per_s_bs{batch}"] = (
            batch * settings.new_tokens / max(generate - prefill, 1e-9))
    if device.type == "cuda":
        figures["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss_since_reset()
        figures["peak_memory_bytes"] = None if peak is None else max(peak - before, 0)
    del model
    release_freed_memory()
    return figures
