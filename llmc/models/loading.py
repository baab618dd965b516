"""Load a checkpoint's tokenizer and model onto the CPU, checked against its adapter."""
import torch
from loguru import logger

from ..errors import LlmcError
from ..registry import MODELS
from .builtin import resolve_model_path

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(model_cfg.path))


def load_model(model_cfg):
    """(model on CPU in eval mode, adapter)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    adapter = MODELS.lookup(model_cfg.type, "model.type")
    path = resolve_model_path(model_cfg.path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise LlmcError(f"model.path '{model_cfg.path}' is not a loadable Hugging Face model "
                        f"directory: {err}") from None
    if config.model_type not in adapter.model_types:
        owner = [a.name for a in MODELS.values() if config.model_type in a.model_types]
        if owner:
            raise LlmcError(f"model.type is {adapter.name} but '{model_cfg.path}' is a "
                            f"{config.model_type} checkpoint; set model.type: {owner[0]}")
        logger.warning(f"model_type '{config.model_type}' is not one {adapter.name} lists; "
                       "trying its table anyway")
    dtype = DTYPES.get(model_cfg.torch_dtype, "auto")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, low_cpu_mem_usage=True)
    model.eval()
    model.config.use_cache = False
    adapter.check(model)
    logger.info(f"loaded {type(model).__name__} from {path} ({model.dtype}, "
                f"{len(adapter.get_blocks(model))} blocks)")
    return model, adapter
