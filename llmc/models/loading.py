"""Load a checkpoint's tokenizer, and its model onto the CPU as a ModelHandle checked against its
adapter."""
import json
import os

import torch
from loguru import logger

from ..errors import LlmcError
from ..registry import MODELS
from .builtin import resolve_model_path
from .handle import ModelHandle

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    # A checkpoint with its own modeling code may ship its own tokenizer code too (Baichuan).
    MODELS.lookup(model_cfg.type, "model.type").check_remote_code_allowed(
        model_cfg.trust_remote_code)
    return AutoTokenizer.from_pretrained(resolve_model_path(model_cfg.path),
                                         trust_remote_code=model_cfg.trust_remote_code)


def checkpoint_model_type(model_cfg, path) -> str:
    """config.json's model_type, read as plain JSON: no checkpoint code runs for it."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f)["model_type"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LlmcError(f"model.path '{model_cfg.path}' is not a loadable Hugging Face model "
                        f"directory: no config.json with a model_type ({err})") from None


def load_model(model_cfg) -> ModelHandle:
    """The checkpoint's model on the CPU in eval mode, with its adapter, checked against it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    adapter = MODELS.lookup(model_cfg.type, "model.type")
    path = resolve_model_path(model_cfg.path)
    # Architecture and permission are settled from config.json alone, before any checkpoint
    # code could run (AutoConfig already imports it for remote-code models).
    model_type = checkpoint_model_type(model_cfg, path)
    if model_type not in adapter.model_types:
        owner = [a.name for a in MODELS.values() if model_type in a.model_types]
        if owner:
            raise LlmcError(f"model.type is {adapter.name} but '{model_cfg.path}' is a "
                            f"{model_type} checkpoint; set model.type: {owner[0]}")
        logger.warning(f"model_type '{model_type}' is not one {adapter.name} lists; "
                       "trying its table anyway")
    adapter.check_remote_code_allowed(model_cfg.trust_remote_code)
    remote = model_cfg.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=remote)
    except (OSError, ValueError) as err:
        raise LlmcError(f"model.path '{model_cfg.path}' is not a loadable Hugging Face model "
                        f"directory: {err}") from None
    adapter.apply_config_overrides(config)
    dtype = DTYPES.get(model_cfg.torch_dtype, "auto")
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype,
                                                 low_cpu_mem_usage=True, trust_remote_code=remote)
    model.eval()
    model.config.use_cache = False
    handle = ModelHandle(model, adapter)
    handle.check()
    logger.info(f"loaded {type(model).__name__} from {path} ({handle.dtype}, "
                f"{handle.num_blocks} blocks)")
    return handle
