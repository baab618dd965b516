"""Load a checkpoint's tokenizer, and its model onto the CPU as a ModelHandle checked against its
adapter. The checks that need no weights live in preflight.py (the pipeline runs them first);
the ones here repeat the cheap ones, for callers that load without a preflight, and catch what
only loading shows."""
import torch
from loguru import logger

from ..distributed import World, env_local_world_size
from ..errors import LlmcError, reason
from ..registry import MODELS
from .handle import ModelHandle
from .safetensors_io import tensor_entries
from .stream import NotStreamable, StreamedHandle
from .preflight import (adapter_and_config, check_remote_code, check_tokenizer_files,
                        checkpoint_dir, read_config_json, unsupported)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    # A checkpoint with its own modeling code may ship its own tokenizer code too (Baichuan).
    path = checkpoint_dir(model_cfg)
    if model_cfg.type == "auto":
        check_remote_code(model_cfg, read_config_json(model_cfg, path))
    else:
        MODELS.lookup(model_cfg.type, "model.type").check_remote_code_allowed(
            model_cfg.trust_remote_code)
    check_tokenizer_files(model_cfg, path)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=model_cfg.trust_remote_code)
    except Exception as err:  # a corrupt file raises whatever its parser raises
        raise LlmcError(f"model.path '{model_cfg.path}': its tokenizer does not load "
                        f"({reason(err)}); restore the checkpoint's tokenizer files "
                        "(tokenizer.json, tokenizer_config.json, ...)") from None


def _adapter_and_config(model_cfg):
    path = checkpoint_dir(model_cfg)
    # Architecture and permission are settled from config.json alone, before any checkpoint
    # code could run (AutoConfig already imports it for remote-code models).
    config_json = read_config_json(model_cfg, path)
    model_type = config_json["model_type"]
    adapter, listed, config = adapter_and_config(model_cfg, path, config_json)
    if not listed:
        logger.warning(f"model_type '{model_type}' is not one {adapter.name} lists; "
                       "trying its table anyway")
    return path, model_type, adapter, listed, config


def load_model(model_cfg) -> ModelHandle:
    """The checkpoint's model on the CPU in eval mode, with its adapter, checked against it."""
    from transformers import AutoModelForCausalLM

    path, model_type, adapter, listed, config = _adapter_and_config(model_cfg)
    dtype = DTYPES.get(model_cfg.torch_dtype, "auto")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), config=config, dtype=dtype, low_cpu_mem_usage=True, local_files_only=True,
            trust_remote_code=model_cfg.trust_remote_code, output_loading_info=True)
    except Exception as err:  # corrupt files, shapes config.json does not match, ...
        raise LlmcError(f"model.path '{model_cfg.path}': loading the model failed "
                        f"({reason(err)}); the checkpoint is corrupt or does not match its "
                        "config.json") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        # transformers would start these from random values: a silently different model.
        raise LlmcError(f"model.path '{model_cfg.path}': the weights lack {len(missing)} "
                        f"tensor(s) the model needs ({', '.join(missing[:3])}"
                        f"{' ...' if len(missing) > 3 else ''}); the checkpoint is incomplete "
                        "or config.json belongs to another model")
    model.eval()
    model.config.use_cache = False
    handle = _checked(ModelHandle(model, adapter), model_cfg, model_type, listed)
    logger.info(f"loaded {type(model).__name__} from {path} ({handle.dtype}, "
                f"{handle.num_blocks} blocks)")
    return handle


def _checked(handle, model_cfg, model_type, listed):
    try:
        handle.check()
    except LlmcError as err:
        if listed:
            raise
        logger.debug(f"model.type {handle.adapter.name} does not fit {model_type}: {err}")
        raise unsupported(model_cfg, model_type) from None
    return handle


def load_streamed(model_cfg, weight_files, shard_dir, writes=True) -> StreamedHandle:
    """The checkpoint's model as a skeleton whose weights are read from `weight_files` (the
    safetensors files transformers would read) part by part while used; finished blocks are
    written to `shard_dir` (by this process when `writes`; under torchrun, by rank 0 alone).
    An LlmcError when a weight the model needs is not in the files."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, GenerationConfig

    path, model_type, adapter, listed, config = _adapter_and_config(model_cfg)
    dtype = DTYPES.get(model_cfg.torch_dtype) or _checkpoint_dtype(config, weight_files)
    try:
        # Parameters on the meta device; buffers (rotary frequencies, ...) computed as usual.
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code)
    except Exception as err:
        raise LlmcError(f"model.path '{model_cfg.path}': no causal language model can be built "
                        f"from its config.json ({reason(err)})") from None
    model.tie_weights()  # skipped under init_empty_weights; the tied names share one source
    model.eval()
    model.config.use_cache = False
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    handle = _checked(StreamedHandle(model, adapter, weight_files, shard_dir, writes), model_cfg,
                      model_type, listed)
    logger.info(f"streaming {type(model).__name__} from {path} ({handle.dtype}, "
                f"{handle.num_blocks} blocks): each part read from disk only while used")
    return handle


def _checkpoint_dtype(config, weight_files) -> torch.dtype:
    """What from_pretrained's dtype "auto" picks: config.json's dtype, else the first floating
    tensor's."""
    named = getattr(config, "dtype", None)
    if isinstance(named, torch.dtype):
        return named
    if isinstance(named, str) and named in DTYPES:
        return DTYPES[named]
    for file in weight_files:
        for entry in tensor_entries(file).values():
            if entry.dtype.is_floating_point:
                return entry.dtype
    return torch.get_default_dtype()


# model.load auto holds a model in memory when its weights take at most this share of the
# free RAM, and streams it otherwise.
IN_MEMORY_SHARE = 4


def load_for_run(model_cfg, weight_files, shard_dir, world=World()):
    """(handle, how): the model as `model.load` asks: streamed from the checkpoint's safetensors
    (finished blocks written to `shard_dir`), or whole in memory; `auto` holds it in memory when
    it fits in 1/IN_MEMORY_SHARE of the free RAM or cannot be streamed, and streams it
    otherwise. `how` says which, and why, for the log and results.json.

    Under torchrun (`world`, llmc.distributed) every rank on a machine holds its own copy, so
    `auto` counts one per local rank, and all ranks follow rank 0's choice."""
    writes = world.leads
    safetensors = all(f.name.endswith(".safetensors") for f in weight_files)
    if model_cfg.load == "memory":
        return load_model(model_cfg), {"load": "memory", "why": "model.load: memory"}
    if not safetensors:
        why = "its weights are not safetensors files (a .bin checkpoint cannot be read per part)"
        if model_cfg.load == "stream":
            raise LlmcError(f"model.load is stream, but model.path '{model_cfg.path}': {why}; "
                            "convert it (from_pretrained, then save_pretrained) or set "
                            "model.load: memory")
        logger.info(f"loading the whole model into memory: {why}")
        return load_model(model_cfg), {"load": "memory", "why": why}
    try:
        handle = load_streamed(model_cfg, weight_files, shard_dir, writes)
    except NotStreamable as err:
        if model_cfg.load == "stream":
            raise
        # Names transformers maps with its own conversion rules: let it load the model.
        logger.warning(f"loading the whole model into memory: {err.why}")
        return load_model(model_cfg), {"load": "memory", "why": err.why}
    fits = world.broadcast_object(
        handle.weight_bytes * env_local_world_size() <= available_ram() // IN_MEMORY_SHARE)
    if model_cfg.load == "auto" and fits:
        # Measured: for a model this small, holding it is up to ~10% faster than streaming it
        # (no block written, no checkpoint per block); docs/performance.md.
        why = (f"the model ({handle.weight_bytes / 2**30:.2f} GiB) fits in 1/{IN_MEMORY_SHARE} "
               f"of the free RAM ({available_ram() / 2**30:.1f} GiB), where holding it is "
               "faster; model.load: stream streams it (and lets a killed run resume)")
        logger.info(f"loading the whole model into memory: {why}")
        return load_model(model_cfg), {"load": "memory", "why": why}
    return handle, {"load": "stream", "why": f"model.load: {model_cfg.load}"}


def available_ram() -> int:
    import psutil

    return psutil.virtual_memory().available
