"""Load a checkpoint's tokenizer, and its model onto the CPU as a ModelHandle checked against its
adapter. The checks that need no weights live in preflight.py (the pipeline runs them first);
the ones here repeat the cheap ones, for callers that load without a preflight, and catch what
only loading shows."""
import torch
from loguru import logger

from ..errors import LlmcError
from ..registry import MODELS
from .handle import ModelHandle
from .preflight import (adapter_for, check_tokenizer_files, checkpoint_dir, load_hf_config,
                        read_config_json, reason, unsupported)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    # A checkpoint with its own modeling code may ship its own tokenizer code too (Baichuan).
    MODELS.lookup(model_cfg.type, "model.type").check_remote_code_allowed(
        model_cfg.trust_remote_code)
    path = checkpoint_dir(model_cfg)
    check_tokenizer_files(model_cfg, path)
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                             trust_remote_code=model_cfg.trust_remote_code)
    except Exception as err:  # a corrupt file raises whatever its parser raises
        raise LlmcError(f"model.path '{model_cfg.path}': its tokenizer does not load "
                        f"({reason(err)}); restore the checkpoint's tokenizer files "
                        "(tokenizer.json, tokenizer_config.json, ...)") from None


def load_model(model_cfg) -> ModelHandle:
    """The checkpoint's model on the CPU in eval mode, with its adapter, checked against it."""
    from transformers import AutoModelForCausalLM

    path = checkpoint_dir(model_cfg)
    # Architecture and permission are settled from config.json alone, before any checkpoint
    # code could run (AutoConfig already imports it for remote-code models).
    model_type = read_config_json(model_cfg, path)["model_type"]
    adapter, listed = adapter_for(model_cfg, model_type)
    if not listed:
        logger.warning(f"model_type '{model_type}' is not one {adapter.name} lists; "
                       "trying its table anyway")
    config = load_hf_config(model_cfg, adapter, path)
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
    handle = ModelHandle(model, adapter)
    try:
        handle.check()
    except LlmcError as err:
        if listed:
            raise
        logger.debug(f"model.type {adapter.name} does not fit {model_type}: {err}")
        raise unsupported(model_cfg, model_type) from None
    logger.info(f"loaded {type(model).__name__} from {path} ({handle.dtype}, "
                f"{handle.num_blocks} blocks)")
    return handle
