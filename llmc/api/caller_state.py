"""What llmc.prune changes in its caller's process while it runs, put back as it was when it
returns or raises: the global random states (Python, NumPy, torch's CPU and CUDA generators),
torch's intra-op thread count and grad mode, and the model's own flags (each module's
`training`, each parameter's `requires_grad`, `config.use_cache`). A run seeds the generators
and puts the model in eval mode as the CLI does; a training script that prunes between two
stages must find its RNG stream and its trainable parameters where it left them."""
import contextlib
import random
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn


@contextlib.contextmanager
def caller_state_kept(model: nn.Module) -> Iterator[None]:
    """The process's and `model`'s state as on entry, again on exit (also after an error).
    Inside, the model is in eval mode with the key/value cache off, as the engine computes."""
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    training = {name: module.training for name, module in model.named_modules()}
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    try:
        model.eval()
        if config is not None and use_cache is not None:
            config.use_cache = False
        yield
    finally:
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        for name, module in model.named_modules():
            if name in training:
                module.training = training[name]
        for name, parameter in model.named_parameters():
            if name in trainable:
                parameter.requires_grad_(trainable[name])
        if config is not None and use_cache is not None:
            config.use_cache = use_cache
