"""Capture what the model hands block 0: the hidden states and every other argument.

A pre-hook on block 0 records (hidden states, extra positional args, kwargs) and stops the
forward. The kwargs (attention mask, position ids, position_embeddings, alibi, ...) are whatever
this transformers version passes, so blocks are later called exactly as the model calls them.
"""
import torch
from loguru import logger

from .device import to_device


class _Captured(Exception):
    def __init__(self, hidden, args, kwargs):
        super().__init__()
        self.hidden, self.args, self.kwargs = hidden, args, kwargs


def _same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # objects without a usable ==
        return a is b


class BlockInputs:
    """Per batch: the hidden states entering the current block and the call's other arguments.
    Identical argument sets (same-length windows) are stored once and shared. The hidden states
    live at `home`: a device, or an ActivationFile (llmc.runner.activations) whose views they
    are, written over in place."""

    def __init__(self, home):
        self.home = home
        self.hidden = []
        self.calls = []  # (args, kwargs) per batch, shared objects where equal

    def _placed(self, index, hidden):
        if isinstance(self.home, torch.device):
            return hidden.to(self.home)
        return self.home.hold(index, hidden)

    def replace(self, index, out):
        """Batch `index`'s hidden states become `out` (its forward is done)."""
        if isinstance(self.home, torch.device):
            self.hidden[index] = out.to(self.hidden[index].device)
        else:
            self.hidden[index].copy_(out)

    def restore(self, hidden):
        """Hidden states saved earlier (a resumed run's), one per batch, in place of these."""
        self.hidden = [self._placed(index, h) for index, h in enumerate(hidden)]

    def add(self, hidden, args, kwargs):
        self.hidden.append(self._placed(len(self.hidden), hidden))
        for previous in reversed(self.calls[-4:]):
            if _same(previous, (args, kwargs)):
                self.calls.append(previous)
                return
        self.calls.append((args, kwargs))

    def __len__(self):
        return len(self.hidden)


@torch.no_grad()
def capture_block_inputs(handle, batches, device, home) -> BlockInputs:
    """Run the embeddings (the model's pre-block modules) on `device` for every batch of token
    ids; keep block 0's inputs at `home` (hidden states) / `device` (the small per-call
    arguments; `home` may also be an ActivationFile). No block runs: the hook on block 0 stops
    each forward before it."""

    def stop(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        raise _Captured(hidden, tuple(args[1:]), kwargs)

    captured = BlockInputs(home)
    with handle.pre_blocks_on(device):
        hook = handle.block(0).register_forward_pre_hook(stop, with_kwargs=True)
        try:
            for ids in batches:
                try:
                    handle.model(input_ids=ids.to(device), use_cache=False)
                except _Captured as found:
                    captured.add(found.hidden, to_device(found.args, device),
                                 to_device(found.kwargs, device))
                else:
                    raise RuntimeError("block 0 was never called; the adapter's blocks path is "
                                       "wrong")
        finally:
            hook.remove()
    logger.debug(f"captured block-0 inputs of {len(captured)} batches; "
                 f"kwargs: {sorted(captured.calls[0][1]) if captured.calls else []}")
    return captured


def block_output(result):
    """Decoder layers return a tensor (recent transformers) or a tuple whose first item it is."""
    return result[0] if isinstance(result, (tuple, list)) else result
