"""Model adapters (registered on import), the handle of a loaded model, and loading."""
from . import (baichuan, bloom, builtin, gemma, llama, mistral, moe, opt, phi3,  # noqa: F401
               qwen2, qwen3)  # (register)
from .adapter import Adapter  # noqa: F401
from .handle import ModelHandle  # noqa: F401
from .loading import load_for_run, load_model, load_streamed, load_tokenizer  # noqa: F401
from .preflight import preflight  # noqa: F401
