"""`model.type: auto` for a decoder-only model no adapter table lists: its table, discovered.

The model is built from its config.json with few blocks (enough to see a dense and a MoE
layer where the config says the first ones are dense) and small random weights, and run once on
a few tokens with hooks:

- the blocks: the ModuleList of identical modules the model calls in order, as many as
  `num_hidden_layers`;
- the modules before and after them: every module outside the blocks holding weights or
  buffers, in the order the forward runs them (a parent rather than its children);
- the input groups: the Linears of a block that read the identical tensor object, in call
  order; fused experts (llmc.models.experts) become one group per expert (`*`); a Linear of a
  MoE layer with one output, or one per expert, is a gate and stays dense.

Whatever it cannot resolve is one LlmcError naming it: e.g. GPT-2's projections are Conv1D
modules, not Linears, which llmc's statistics and methods do not read.
"""
import copy
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from loguru import logger

from ..errors import LlmcError, reason
from .adapter import Adapter
from .experts import UnfusedExperts, is_fused_experts, unfuse_experts
from .gemma import soft_capped_logits

TOKENS = 16  # the discovery forward's sequence length


def _sample_config(config):
    """`config` with only the blocks discovery needs and a vocabulary of TOKENS*4 ids."""
    small = copy.deepcopy(config)
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise LlmcError("model.type auto: config.json has no num_hidden_layers, so the decoder "
                        "blocks cannot be told apart; set model.type to a supported one")
    dense_first = getattr(config, "first_k_dense_replace", 0) or 0
    small.num_hidden_layers = min(layers, 2 + dense_first)
    if isinstance(getattr(small, "layer_types", None), list):
        small.layer_types = small.layer_types[:small.num_hidden_layers]
    vocab = TOKENS * 4
    small.vocab_size = vocab
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(small, key, None)
        if isinstance(value, int) and value >= vocab:
            setattr(small, key, None)
    return small


def _build(config, trust_remote_code):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code,
                                                 attn_implementation="eager")
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                value = torch.randn(param.shape, generator=generator) * 0.02
                module._parameters[name] = nn.Parameter(value, requires_grad=False)
    return model.float().eval()


def _find_blocks(model, count) -> str:
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) == count and count
                  and len({type(child) for child in module}) == 1]
    if len(candidates) != 1:
        found = ", ".join(name for name, _ in candidates) or "none"
        raise LlmcError(f"model.type auto: cannot tell the decoder blocks apart (ModuleLists of "
                        f"{count} identical modules: {found}); set model.type to a supported "
                        "one (docs/models.md)")
    return candidates[0][0]


def _owners(model, blocks_path) -> List[str]:
    """Modules outside the blocks holding weights or buffers of their own (not a parent's)."""
    names = []
    for name, module in model.named_modules():
        if name == blocks_path or name.startswith(blocks_path + "."):
            continue
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if own and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def discover(config, trust_remote_code=False) -> Adapter:
    """The adapter table of `config`'s model (see the module docstring)."""
    small = _sample_config(config)
    try:
        model = _build(small, trust_remote_code)
    except Exception as err:
        raise LlmcError(f"model.type auto: no causal language model can be built from "
                        f"config.json ({reason(err)})") from None
    blocks_path = _find_blocks(model, small.num_hidden_layers)
    blocks = model.get_submodule(blocks_path)
    conv = sorted({type(m).__name__ for m in blocks.modules()
                   if type(m).__name__ in ("Conv1D", "Conv1d")})
    if conv:
        names = [n for n, m in blocks[0].named_modules() if type(m).__name__ in conv]
        raise LlmcError(f"model.type auto: the blocks' projections ({', '.join(names[:4])}) are "
                        f"{'/'.join(conv)} modules, not Linears, which llmc cannot prune; no "
                        "adapter supports this architecture")
    expert_paths = sorted({name for block in blocks for name, m in block.named_modules()
                           if is_fused_experts(m)})
    unfuse_experts(blocks, expert_paths)

    order: List[Tuple[str, str]] = []  # (phase, module name) outside the blocks, in call order
    phase = ["pre"]
    seen: Dict[int, List[Tuple[str, torch.Tensor]]] = {}  # block -> (Linear, input) in order
    hooks = [blocks[0].register_forward_pre_hook(lambda *a: phase.__setitem__(0, "blocks")),
             blocks[-1].register_forward_hook(lambda *a: phase.__setitem__(0, "post"))]
    for name in _owners(model, blocks_path):
        hooks.append(model.get_submodule(name).register_forward_pre_hook(
            lambda m, a, name=name: order.append((phase[0], name))))
    for index, block in enumerate(blocks):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                hooks.append(module.register_forward_pre_hook(
                    lambda m, a, name=name, index=index:
                        seen.setdefault(index, []).append((name, a[0]))))
    try:
        with torch.no_grad():
            model(input_ids=torch.arange(TOKENS).reshape(1, -1) % small.vocab_size,
                  use_cache=False)
    except Exception as err:
        raise LlmcError(f"model.type auto: a test forward of the model failed "
                        f"({type(err).__name__}: {err}); set model.type to a supported one") \
            from None
    finally:
        for hook in hooks:
            hook.remove()

    groups, dense = _groups(blocks, seen, expert_paths)
    pre = tuple(dict.fromkeys(n for p, n in order if p == "pre"))
    post = tuple(dict.fromkeys(n for p, n in order if p == "post"))
    limit = ("max_position_embeddings",) if hasattr(config, "max_position_embeddings") else ()
    adapter = Adapter(
        name=f"auto:{config.model_type}", model_types=(config.model_type,), blocks=blocks_path,
        pre_blocks=pre, post_blocks=post, groups=groups, trust_remote_code=trust_remote_code,
        position_limit=limit, experts=tuple(expert_paths), dense=dense,
        logits=soft_capped_logits if getattr(config, "final_logit_softcapping", None) else None)
    adapter.check(model)
    logger.info(f"model.type auto: discovered the table of {config.model_type}: blocks "
                f"{blocks_path}, before {list(pre)}, after {list(post)}, groups "
                f"{[list(g) for g in groups]}" + (f", dense {list(dense)}" if dense else ""))
    return adapter


def _starred(name, expert_paths) -> str:
    for path in expert_paths:
        if name.startswith(path + "."):
            index, _, rest = name[len(path) + 1:].partition(".")
            if index.isdigit():
                return f"{path}.*.{rest}"
    return name


def _groups(blocks, seen, expert_paths):
    """(groups, dense) over every sampled block, in first-call order."""
    groups, dense = [], []
    for index, block in enumerate(blocks):
        experts = [m for m in block.modules() if isinstance(m, UnfusedExperts)]
        called = seen.get(index, [])
        by_input: List[Tuple[torch.Tensor, List[str]]] = []
        for name, tensor in called:
            linear = block.get_submodule(name)
            if experts and linear.out_features in (1, len(experts[0])) and \
                    _starred(name, expert_paths) == name:
                dense.append(name)  # a gate: a score per expert, or one
                continue
            for held, names in by_input:
                if held is tensor:
                    if name not in names:
                        names.append(name)
                    break
            else:
                by_input.append((tensor, [name]))
        for _, names in by_input:
            group = tuple(dict.fromkeys(_starred(n, expert_paths) for n in names))
            if group not in groups:
                groups.append(group)
        missing = {n for n, m in block.named_modules() if isinstance(m, nn.Linear)} - \
            {n for n, _ in called}
        missing = {n for n in missing if _starred(n, expert_paths) == n}  # idle experts: fine
        if missing:
            raise LlmcError(f"model.type auto: block {index}'s Linears {sorted(missing)} never "
                            "ran on the test forward (or run as F.linear on their weights), so "
                            "their inputs cannot be found; set model.type to a supported one")
    return tuple(groups), tuple(dict.fromkeys(dense))
