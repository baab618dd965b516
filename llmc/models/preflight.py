"""The checkpoint preflight: everything about `model.path` that can be known without loading a
weight, checked before the tokenizer, the data and the model load, so a bad checkpoint or a
setting it cannot take stops a run in seconds with one message.

In order: the path is a directory with a config.json naming a model_type an adapter supports;
its weight files are there and whole (index shards present, safetensors headers parse and match
the file lengths); a tokenizer is there. Then, after the remote-code permission check, the
model's skeleton is built on the meta device (no memory) from config.json to check the adapter
table against its modules, the weight shapes against the safetensors headers, N:M against every
block Linear's width, and the sequence lengths against the model's position limit.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from loguru import logger

from ..errors import ConfigError, LlmcError, reason
from ..registry import MODELS
from .adapter import Adapter
from .builtin import resolve_model_path
from .experts import unfuse_experts
from .fingerprint import fingerprint_files
from .weight_files import WeightFiles, check_weight_files, find_weight_files

# Files from which AutoTokenizer can build a tokenizer: the fast tokenizer's own file, a
# sentencepiece model (Llama, Baichuan, T5, XLM-R), BPE or WordPiece vocabularies, tiktoken.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "tokenizer.tiktoken")


def checkpoint_dir(model_cfg) -> Path:
    """model.path as a local directory (a built-in model converted and verified first)."""
    path = Path(resolve_model_path(model_cfg.path))
    if not path.exists():
        raise LlmcError(f"model.path '{model_cfg.path}' does not exist; point it at a Hugging "
                        "Face model directory")
    if not path.is_dir():
        gguf = (" (a GGUF file is not a Hugging Face checkpoint: convert it first, with "
                "transformers' from_pretrained(..., gguf_file=...) and save_pretrained)"
                if path.suffix == ".gguf" else "")
        raise LlmcError(f"model.path '{model_cfg.path}' is a file; point it at the directory "
                        "that holds config.json, the weights and the tokenizer files "
                        f"(perhaps '{path.parent}'){gguf}")
    return path


def read_config_json(model_cfg, path: Path) -> dict:
    """config.json as plain JSON (no checkpoint code runs for it), with a model_type."""
    file = path / "config.json"
    where = f"model.path '{model_cfg.path}'"
    if not file.is_file():
        hint = "save the model with save_pretrained, or copy the checkpoint's config.json into it"
        if (path / "adapter_config.json").is_file():
            hint = ("it holds a PEFT adapter, not a model: merge the adapter into its base model "
                    "(merge_and_unload) and save that")
        elif (path / "snapshots").is_dir():
            hint = "it looks like a hub cache folder: point model.path at snapshots/<revision>"
        raise LlmcError(f"{where} is not a loadable Hugging Face model directory: it has no "
                        f"config.json ({hint})")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise LlmcError(f"{where}: config.json cannot be read as JSON ({err}); restore it from "
                        "the original checkpoint") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise LlmcError(f"{where}: config.json has no model_type (a Hugging Face config.json "
                        "names its architecture, e.g. \"model_type\": \"llama\"); restore it "
                        "from the original checkpoint")
    quantization = config.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
        raise LlmcError(f"{where} is a quantized checkpoint (config.json quantization_config, "
                        f"quant_method {method}); llmc prunes floating-point weights: use the "
                        "unquantized model")
    return config


def supported_model_types() -> List[str]:
    return sorted({t for adapter in MODELS.values() for t in adapter.model_types})


def registered_adapter(model_type: str) -> Optional[Adapter]:
    """The table made for `model_type` (the one listing it first: Mistral before Llama, which
    also takes mistral checkpoints), else one listing it, else None."""
    listing = [a for a in MODELS.values() if model_type in a.model_types]
    listing.sort(key=lambda a: a.model_types.index(model_type))
    return listing[0] if listing else None


# Tables discovered for model.type auto, by (checkpoint directory, model_type): discovery runs
# once per run although the preflight and loading both ask.
_DISCOVERED: Dict[Tuple[str, str], Adapter] = {}


def adapter_and_config(model_cfg, path: Path, config_json: dict):
    """(adapter, whether it was made for this model_type, the transformers config with the
    adapter's overrides). model.type auto: the table registered for config.json's model_type,
    else one discovered from the model itself (llmc.models.discover)."""
    model_type = config_json["model_type"]
    if model_cfg.type != "auto":
        adapter, listed = adapter_for(model_cfg, model_type)
        return adapter, listed, load_hf_config(model_cfg, adapter, path)
    adapter = registered_adapter(model_type)
    if adapter is not None:
        return adapter, True, load_hf_config(model_cfg, adapter, path)
    check_decoder_only(model_cfg, config_json)
    check_remote_code(model_cfg, config_json)
    try:
        config = load_hf_config(model_cfg, None, path)
    except LlmcError as err:
        raise LlmcError(f"model.path '{model_cfg.path}' is a {model_type} checkpoint: no llmc "
                        "table lists it, and its config does not load to discover one "
                        f"({getattr(err, 'cause', err)}); supported model types: "
                        f"{', '.join(supported_model_types())} (see docs/models.md)") from None
    key = (str(path.resolve()), model_type)
    if key not in _DISCOVERED:
        from .discover import discover

        _DISCOVERED[key] = discover(config, model_cfg.trust_remote_code)
    return _DISCOVERED[key], True, config


def check_decoder_only(model_cfg, config_json: dict) -> None:
    """An encoder-decoder (T5, BART) or encoder-only (BERT) checkpoint said as such, before any
    attempt to build it as a causal LM (whose failure lists every config class transformers
    has)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = config_json["model_type"]
    if config_json.get("is_encoder_decoder"):
        kind = "an encoder-decoder model"
    elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config_json.get("is_decoder"):
        kind = "an encoder-only (masked language) model"
    else:
        return
    raise LlmcError(f"model.path '{model_cfg.path}': llmc prunes decoder-only causal language "
                    f"models; this is a {model_type} checkpoint, {kind}")


def check_remote_code(model_cfg, config_json: dict) -> None:
    """model.type auto: the permission to run the checkpoint's own code. The table registered
    for its model_type says whether it has such code (Baichuan); for any other model_type,
    config.json's auto_map does."""
    adapter = registered_adapter(config_json["model_type"])
    if adapter is not None:
        adapter.check_remote_code_allowed(model_cfg.trust_remote_code)
        return
    if model_cfg.trust_remote_code or "AutoModelForCausalLM" not in (
            config_json.get("auto_map") or {}):
        return
    raise ConfigError(f"model.path '{model_cfg.path}': its modeling code ships with the "
                      "checkpoint (config.json auto_map) and is not part of transformers, so "
                      "llmc must be allowed to run it; set model.trust_remote_code: True (only "
                      "for checkpoints you trust)")


def adapter_for(model_cfg, model_type: str) -> Tuple[Adapter, bool]:
    """(model.type's adapter, whether it lists `model_type`). A model_type another adapter
    lists is an error naming that adapter."""
    adapter = MODELS.lookup(model_cfg.type, "model.type")
    if model_type in adapter.model_types:
        return adapter, True
    owner = [a.name for a in MODELS.values() if model_type in a.model_types]
    if owner:
        raise LlmcError(f"model.type is {adapter.name} but '{model_cfg.path}' is a "
                        f"{model_type} checkpoint; set model.type: {owner[0]}")
    return adapter, False


def unsupported(model_cfg, model_type: str) -> LlmcError:
    return LlmcError(f"model.path '{model_cfg.path}' is a {model_type} checkpoint, an "
                     "architecture no llmc adapter supports (nor does the model.type "
                     f"{model_cfg.type} table fit it); supported model types: "
                     f"{', '.join(supported_model_types())} (see docs/models.md)")


def check_tokenizer_files(model_cfg, path: Path) -> None:
    if any((path / name).is_file() for name in TOKENIZER_FILES) or any(path.glob("*.tiktoken")):
        return
    raise LlmcError(f"model.path '{model_cfg.path}' has no tokenizer (none of "
                    f"{', '.join(TOKENIZER_FILES[:5])}, ...); copy the tokenizer files of the "
                    "model it was trained with into it (tokenizer.save_pretrained(path))")


def load_hf_config(model_cfg, adapter: Adapter, path: Path):
    """The transformers config of the checkpoint, with the adapter's overrides. Runs the
    checkpoint's code for remote-code models: only after the permission check."""
    from transformers import AutoConfig

    if adapter is not None:  # None: model.type auto, allowed by check_remote_code
        adapter.check_remote_code_allowed(model_cfg.trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code,
                                            local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, KeyError, TypeError...
        failure = LlmcError(f"model.path '{model_cfg.path}' is not a loadable Hugging Face "
                            f"model directory: its config does not load ({reason(err)})")
        failure.cause = reason(err)
        raise failure from None
    if adapter is not None:
        adapter.apply_config_overrides(config)
    return config


def build_skeleton(model_cfg, config):
    """The model built from `config` on the meta device: every module and shape, no memory."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(
                config, trust_remote_code=model_cfg.trust_remote_code)
    except Exception as err:
        raise LlmcError(f"model.path '{model_cfg.path}': no causal language model can be built "
                        f"from its config.json ({reason(err)})") from None


def check_shapes(model_cfg, adapter: Adapter, skeleton, tensors: Dict[str, tuple],
                 expected: Dict[str, tuple]) -> None:
    """The safetensors headers against the skeleton's tensor shapes (`expected`, taken before
    its experts were unfused): a tensor of the same name must have the same shape, and where
    the checkpoint names the blocks as the model does, every block Linear's weight must be
    there (else transformers would start it from random values; experts, stored fused or
    under names transformers converts, are left to loading)."""
    if not tensors:
        return  # a .bin checkpoint: its tensors are only known by loading it
    for name, (_, shape) in tensors.items():
        if name in expected and expected[name] != shape:
            raise LlmcError(f"model.path '{model_cfg.path}': the weight {name} has shape "
                            f"{list(shape)} but config.json makes it {list(expected[name])}; "
                            "config.json does not belong to these weights")
    if not any(name.startswith(adapter.blocks + ".") for name in tensors):
        return  # stored under other names, which transformers maps on loading
    for index, block in enumerate(adapter.get_blocks(skeleton)):
        for linear in adapter.linear_names_of(block):
            name = f"{adapter.blocks}.{index}.{linear}.weight"
            if name not in tensors and not _in_experts(adapter, linear):
                raise LlmcError(f"model.path '{model_cfg.path}': the weights have no {name}, "
                                f"which config.json ({len(adapter.get_blocks(skeleton))} "
                                "blocks) needs; the weights are incomplete or config.json "
                                "belongs to another model")


def _in_experts(adapter: Adapter, linear: str) -> bool:
    return any(linear.startswith(path + ".") for path in adapter.experts)


def block_linear_widths(adapter: Adapter, skeleton) -> Dict[str, int]:
    """{full Linear name: in_features} of every block Linear (each expert's, unfused)."""
    return {f"{adapter.blocks}.{index}.{name}": block.get_submodule(name).in_features
            for index, block in enumerate(adapter.get_blocks(skeleton))
            for name in adapter.linear_names_of(block)}


def check_n_m(n_m: Optional[Tuple[int, int]], widths: Dict[str, int]) -> None:
    """N:M groups run along a Linear's inputs, so M must divide every block Linear's width."""
    if not n_m:
        return
    n, m = n_m
    divisor = math.gcd(*widths.values())
    fitting = [d for d in range(2, min(divisor, 64) + 1) if divisor % d == 0][:6]
    for name, width in widths.items():
        if width % m == 0:
            continue
        problem = (f"has only {width} inputs (in_features), fewer than M" if m > width else
                   f"has {width} inputs (in_features), not a multiple of M, so its last "
                   f"{width % m} would form a short group")
        fix = (f"M values that fit this model: {', '.join(map(str, fitting))}" if fitting else
               "no M > 1 fits this model's widths")
        raise LlmcError(f"sparse.weight.sparsity_type {n}:{m}: {name} {problem}. N:M needs M "
                        f"to divide every block Linear's width; {fix}; or use sparsity_type: "
                        "unstructured")


def check_seq_lens(adapter: Adapter, config, skeleton, seq_lens: Dict[str, int]) -> None:
    limit = adapter.position_limit_of(config, skeleton)
    if limit is None:
        return
    key, value = limit
    for setting, length in seq_lens.items():
        if length > value:
            raise LlmcError(f"{setting} {length} is longer than the model's position limit "
                            f"({key} = {value} in its config.json): positions past it were "
                            f"never trained, so windows that long give no meaningful result; "
                            f"set {setting} to at most {value}")


@dataclass(frozen=True)
class Checkpoint:
    """What the preflight learned: the local directory, its weight files, its vocabulary."""
    path: Path
    shown: str  # model.path as the config gives it
    weights: WeightFiles
    vocab_size: int

    def fingerprint(self) -> Dict[str, object]:
        """The weight files' sha256s and their combined hash (see fingerprint.py)."""
        return fingerprint_files(self.path, self.weights)

    def check_token_ids(self, named_tensors) -> None:
        """Token ids the model's embedding has no row for would stop a forward with an
        IndexError (CPU) or a device assert (CUDA): refused here, after tokenizing."""
        check_token_ids(named_tensors, self.vocab_size, f"the tokenizer in model.path "
                        f"'{self.shown}'", "use the checkpoint's own tokenizer files")


def check_token_ids(named_tensors, vocab_size: int, source: str, fix: str) -> None:
    """Every id in each (where, token ids) below `vocab_size`, or an LlmcError naming `source`
    (what gave the ids) and `fix`."""
    for where, tensor in named_tensors:
        largest = int(tensor.max()) if tensor.numel() else -1
        if largest >= vocab_size:
            raise LlmcError(f"{source} gives token id {largest} on the {where} text, but the "
                            f"model has only {vocab_size} token embeddings (config.json "
                            f"vocab_size): the tokenizer does not belong to these weights; {fix}")


def embedding_rows(skeleton, config) -> int:
    """How many token ids the model has embeddings for."""
    try:
        return skeleton.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):  # remote code without the accessor
        return config.vocab_size


def seq_lens_in_use(cfg, calibrates: bool) -> Dict[str, int]:
    """The sequence lengths a run will feed the model: {config key: length}."""
    lens = {"calib.seq_len": cfg.calib.seq_len} if calibrates else {}
    if cfg.eval.eval_pos:
        lens["eval.seq_len"] = cfg.eval.seq_len
    return lens


def preflight(cfg, calibrates: bool) -> Checkpoint:
    """Check `cfg.model`'s checkpoint against the run `cfg` describes (see the module doc)."""
    model_cfg = cfg.model
    path = checkpoint_dir(model_cfg)
    config_json = read_config_json(model_cfg, path)
    model_type = config_json["model_type"]
    if model_cfg.type != "auto":
        adapter_for(model_cfg, model_type)  # another adapter's model_type: before the files
    else:
        check_remote_code(model_cfg, config_json)
    explicit = config_json.get("transformers_weights")  # transformers reads this file instead
    weights = find_weight_files(path, model_cfg.path,
                                explicit if isinstance(explicit, str) else None)
    tensors = check_weight_files(weights, model_cfg.path)
    check_tokenizer_files(model_cfg, path)

    listed = model_cfg.type == "auto" or model_type in MODELS.lookup(model_cfg.type).model_types
    try:
        adapter, listed, config = adapter_and_config(model_cfg, path, config_json)
        skeleton = build_skeleton(model_cfg, config)
        shapes = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}
        if adapter.experts:
            try:
                unfuse_experts(adapter.get_blocks(skeleton), adapter.experts)
            except AttributeError:
                pass  # no blocks where the table says: adapter.check names the problem
        adapter.check(skeleton)
    except LlmcError as err:
        if listed or isinstance(err, ConfigError):
            raise
        logger.debug(f"model.type {model_cfg.type} does not fit {model_type}: {err}")
        raise unsupported(model_cfg, model_type) from None
    if not listed:
        logger.warning(f"model_type '{model_type}' is not one {adapter.name} lists, but its "
                       "modules fit the table; going on with it")
    check_shapes(model_cfg, adapter, skeleton, tensors, shapes)
    check_n_m(cfg.sparse.weight.n_m, block_linear_widths(adapter, skeleton))
    check_seq_lens(adapter, config, skeleton, seq_lens_in_use(cfg, calibrates))
    vocab_size = embedding_rows(skeleton, config)
    logger.info(f"checkpoint {model_cfg.path}: {model_type}, {len(adapter.get_blocks(skeleton))} "
                f"blocks, weights in {', '.join(f.name for f in weights.all)}")
    return Checkpoint(path, model_cfg.path, weights, vocab_size)
