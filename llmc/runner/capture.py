"""Capture what the model hands its blocks: block 0's hidden states and every block's other
arguments.

Each block's forward is swapped, for one model call per batch, for a stand-in that records
(extra positional args, kwargs) and passes its hidden states on unchanged; the last one stops
the call. So no block computes anything, and every block is later called exactly as the model
calls it: the kwargs (attention mask, position ids, position_embeddings, alibi, ...) are whatever
this transformers version passes to that block. They differ between blocks where layers differ
(Gemma 2/3, Qwen3 with `layer_types`: a sliding-window mask for some layers, a global one for
the others; Gemma 3: a rotary table per layer type); identical ones are stored once.
"""
import torch
from loguru import logger
from tqdm import tqdm

from .device import to_device


class _Captured(Exception):
    """Raised by the last block's stand-in: the rest of the model does not run."""


def _same(a, b):
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
                and torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # objects without a usable ==
        return False


def _identical(a, b) -> bool:
    """Two (args, kwargs) made of the same objects."""
    return (len(a[0]) == len(b[0]) and all(x is y for x, y in zip(a[0], b[0]))
            and a[1].keys() == b[1].keys() and all(a[1][k] is b[1][k] for k in a[1]))


class BlockInputs:
    """Per batch: the hidden states entering the current block, and per block the call's other
    arguments (`call(batch, block)`). Identical argument sets (the blocks of one layer type,
    same-length windows) are stored once and shared. The hidden states live at `home`: a
    device, or an ActivationFile (llmc.runner.activations) whose views they are, written over
    in place."""

    def __init__(self, home):
        self.home = home
        self.hidden = []
        self.calls = []  # per batch: per block, (args, kwargs), shared objects where equal
        self._distinct = []  # the distinct (args, kwargs) seen so far, newest last

    def _placed(self, index, hidden):
        if isinstance(self.home, torch.device):
            return hidden.to(self.home)
        return self.home.hold(index, hidden)

    def call(self, batch: int, block: int):
        """(args, kwargs) the model passes block `block` for batch `batch`."""
        return self.calls[batch][block]

    def replace(self, index, out):
        """Batch `index`'s hidden states become `out` (its forward is done)."""
        if isinstance(self.home, torch.device):
            self.hidden[index] = out.to(self.hidden[index].device)
        else:
            self.hidden[index].copy_(out)

    def restore(self, hidden):
        """Hidden states saved earlier (a resumed run's), one per batch, in place of these."""
        self.hidden = [self._placed(index, h) for index, h in enumerate(hidden)]

    def _shared(self, call, device):
        """`call` as an equal one already held, else moved to `device` and held."""
        for previous in reversed(self._distinct[-8:]):
            if _same(previous[1], call):
                return previous[0]
        moved = (to_device(call[0], device), to_device(call[1], device))
        self._distinct.append((moved, call))
        return moved

    def add(self, hidden, block_calls, device):
        """One batch: block 0's hidden states and each block's (args, kwargs) as recorded."""
        self.hidden.append(self._placed(len(self.hidden), hidden))
        shared, previous = [], None
        for call in block_calls:
            # The model hands most blocks the very objects it handed the one before: no compare.
            if previous is not None and _identical(previous, call):
                shared.append(shared[-1])
            else:
                shared.append(self._shared(call, device))
            previous = call
        self.calls.append(shared)
        del self._distinct[:-8]  # only the recent ones are compared (equal windows are adjacent)

    def __len__(self):
        return len(self.hidden)


def _split(args, kwargs):
    """(hidden states, other positional args, kwargs) of a block call."""
    kwargs = dict(kwargs)
    hidden = args[0] if args else kwargs.pop("hidden_states")
    return hidden, tuple(args[1:]), kwargs


@torch.no_grad()
def capture_block_inputs(handle, batches, device, home) -> BlockInputs:
    """Run the embeddings (the model's pre-block modules) on `device` for every batch of token
    ids; keep block 0's inputs at `home` (hidden states; `home` may also be an ActivationFile)
    and every block's other arguments at `device`. No block computes: each is a stand-in for
    the duration (see the module's docstring)."""
    blocks = [handle.block(index) for index in range(handle.num_blocks)]
    captured = BlockInputs(home)
    recorded = []

    def stand_in(index):
        def forward(*args, **kwargs):
            hidden, rest, kw = _split(args, kwargs)
            recorded.append((hidden, rest, kw))
            if index == len(blocks) - 1:
                raise _Captured()
            # The next block's stand-in ignores it. A model that takes item [0] of a block's
            # output (transformers 4's tuples: OPT, BLOOM) hands the next one a tensor of one
            # axis fewer: from then on a leading axis of 1 keeps it from running out of axes.
            return hidden.unsqueeze(0) if hidden.dim() < recorded[0][0].dim() else hidden
        return forward

    with handle.pre_blocks_on(device):
        for index, block in enumerate(blocks):
            block.forward = stand_in(index)  # an instance attribute: nn.Module.__call__ uses it
        try:
            for ids in tqdm(batches, desc="capturing block inputs"):
                recorded.clear()
                try:
                    handle.model(input_ids=ids.to(device), use_cache=False)
                except _Captured:
                    pass
                if len(recorded) != len(blocks):
                    raise RuntimeError(f"the model called {len(recorded)} of its {len(blocks)} "
                                       "blocks; the adapter's blocks path is wrong")
                captured.add(recorded[0][0], [(rest, kw) for _, rest, kw in recorded], device)
        finally:
            recorded.clear()
            for block in blocks:
                del block.forward
    distinct = {id(call) for calls in captured.calls for call in calls}
    logger.debug(f"captured the block inputs of {len(captured)} batches ({len(distinct)} "
                 f"distinct argument sets); kwargs: "
                 f"{sorted(captured.calls[0][0][1]) if captured.calls else []}")
    return captured


def block_output(result):
    """Decoder layers return a tensor (recent transformers) or a tuple whose first item it is."""
    return result[0] if isinstance(result, (tuple, list)) else result
