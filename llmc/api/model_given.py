"""A model object given to llmc.prune, checked before any work and wrapped in a ModelHandle with
its adapter table, as llmc.models.loading does for a checkpoint: the table registered for its
config's model_type (or model.type), else one discovered from it; the same checks of N:M widths,
sequence lengths and token ids as the preflight makes on a checkpoint."""
import contextlib
from typing import Iterator, List, Tuple

import torch
import torch.nn as nn

from ..errors import LlmcError
from ..models import ModelHandle
from ..models.preflight import (block_linear_widths, check_n_m, check_seq_lens,
                                embedding_rows, registered_adapter, seq_lens_in_use,
                                supported_model_types)
from ..registry import MODELS

HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
               "_backward_pre_hooks")


def check_model_object(model) -> torch.device:
    """The one device `model`'s weights are on, or an LlmcError: not a transformers causal LM,
    weights on the meta device or spread over devices, hooks already attached."""
    if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
        raise LlmcError(f"llmc.prune takes a transformers model object (AutoModelForCausalLM."
                        f"from_pretrained(...)) or the path of a checkpoint, got "
                        f"{type(model).__name__}")
    tensors = list(model.parameters()) + list(model.buffers())
    meta = [name for name, p in model.named_parameters() if p.is_meta]
    if meta:
        raise LlmcError(f"the model's weights are on the meta device ({meta[0]}, {len(meta)} in "
                        "all): there is nothing to prune; load it with its weights "
                        "(from_pretrained without device_map='meta' or init_empty_weights), or "
                        "give llmc.prune the checkpoint's path")
    hooked = hooked_modules(model)
    if hooked:
        name, kind = hooked[0]
        raise LlmcError(f"the model has hooks attached ({kind} on "
                        f"'{name or type(model).__name__}', {len(hooked)} module(s) in all): "
                        "llmc moves blocks between devices and calls them itself, which "
                        "hooks would change or break; load it without device_map / offloading "
                        "(accelerate's dispatch hooks) and remove your own hooks first")
    devices = sorted({str(t.device) for t in tensors})
    if len(devices) > 1:
        raise LlmcError(f"the model's weights are on several devices ({', '.join(devices)}); "
                        "llmc.prune takes a model on one device (the CPU or one GPU): load it "
                        "without device_map, or give llmc.prune the checkpoint's path")
    return torch.device(devices[0]) if devices else torch.device("cpu")


def hooked_modules(model: nn.Module) -> List[Tuple[str, str]]:
    """(module name, kind) of every module with a hook: torch's hook tables, accelerate's
    `_hf_hook` (device_map dispatch, offloading)."""
    found = []
    for name, module in model.named_modules():
        if getattr(module, "_hf_hook", None) is not None:
            found.append((name, "an accelerate hook"))
            continue
        for table in HOOK_TABLES:
            if getattr(module, table, None):
                found.append((name, table.strip("_").replace("_", " ")))
                break
    return found


def adapter_of(model, model_cfg):
    """model.type's table (one listing the model's model_type), else the one registered for
    its model_type, else one discovered from its config."""
    model_type = getattr(model.config, "model_type", None) or type(model).__name__
    if model_cfg.type != "auto":
        adapter = MODELS.lookup(model_cfg.type, "model.type")
        owner = registered_adapter(model_type)
        if model_type not in adapter.model_types and owner is not None:
            raise LlmcError(f"model.type is {adapter.name} but the model is a {model_type}; set "
                            f"model.type: {owner.name} (or auto)")
        return adapter
    adapter = registered_adapter(model_type)
    if adapter is not None:
        return adapter
    from ..models.discover import discover

    try:
        # the caller already runs the model's code: permission to build it is theirs to give
        return discover(model.config, trust_remote_code=True)
    except LlmcError as err:
        raise LlmcError(f"the model is a {model_type}: no llmc table lists it and none could be "
                        f"discovered ({err}); supported model types: "
                        f"{', '.join(supported_model_types())} (see docs/models.md)") from None


@contextlib.contextmanager
def handle_of(model, model_cfg) -> Iterator[ModelHandle]:
    """`model` as a checked ModelHandle for the duration, with its adapter's config overrides;
    on exit its config and layout as they were (experts fused again)."""
    adapter = adapter_of(model, model_cfg)
    config = model.config
    before = [(key, getattr(config, key)) for key, _ in adapter.config_overrides
              if hasattr(config, key)]
    unset = [key for key, _ in adapter.config_overrides if not hasattr(config, key)]
    adapter.apply_config_overrides(config)
    handle = None
    try:
        handle = ModelHandle(model, adapter)
        handle.check()
        yield handle
    finally:
        if handle is not None:
            handle.release()
        for key, value in before:
            setattr(config, key, value)
        for key in unset:
            delattr(config, key)


def check_against_run(handle, cfg, calibrates: bool) -> int:
    """The preflight's checks that need the model's shapes: N:M against each Linear's width,
    the sequence lengths against its position limit. Returns its vocabulary size."""
    model = handle.model
    check_n_m(cfg.sparse.weight.n_m, block_linear_widths(handle.adapter, model))
    check_seq_lens(handle.adapter, model.config, model, seq_lens_in_use(cfg, calibrates))
    return embedding_rows(model, model.config)
