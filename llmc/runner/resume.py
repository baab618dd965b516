"""The resume state of a streamed run: after each finished block, what a rerun of the same
command needs to go on from the next block instead of block 0.

It lives in `save_path/.llmc/scratch/resume/` beside the finished blocks' shards
(`scratch/shards/`, written by llmc.models.stream before the state names them):

    state.json          the fingerprint of what changes the weights, the next block, the
                        activations file's name, the plan, the RNG states, and the results
                        computed before the block loop (`carried`: pretrain perplexities, ...)
    activations-<k>.safetensors   the hidden states entering block k, one tensor per batch
                        (under torchrun one file per rank, activations-<k>-rank<r>, each
                        rank's windows; rank 0 alone writes state.json, once all are on disk)

The commit point of a block is the rename of a fsync'ed temporary over state.json, made after
the activations it names are on disk: a SIGKILL at any instant leaves the previous state or
the new one. The state is a cache of work, never a reason to fail: one that does not read back
is reported and the run starts over. One for other weights, data, settings or another number
of ranks is refused unless `save.overwrite`.
"""
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from loguru import logger

from ..assets import sha256_of
from ..distributed import World
from ..errors import LlmcError
from ..files import fsync_dir, write_text
from ..models.safetensors_io import read_tensor, tensor_entries, write_tensors

STATE = "state.json"
SHARDS = "shards"  # beside this directory: llmc.outputs.Layout.shards
ACTIVATIONS = "activations-{:05d}.safetensors"


def resume_fingerprint(cfg, weight_files, checkpoint_dir, calib_tokens_sha256, device) -> dict:
    """What changes the pruned weights: the model (its path, type, dtype, every weight file's
    name, size and mtime, config.json's sha256), the calibration settings and token ids, the
    method's settings, the seed, and the device type (CPU and CUDA round differently). Not eval,
    save, base.offload_activations or model.load: they change where things wait, not a weight."""
    config_json = Path(checkpoint_dir) / "config.json"
    raw = cfg.to_dict()
    files = []
    for file in weight_files:
        stat = Path(file).stat()
        files.append([Path(file).name, stat.st_size, stat.st_mtime_ns])
    return {
        "model": {"path": str(Path(checkpoint_dir).absolute()), "type": cfg.model.type,
                  "torch_dtype": cfg.model.torch_dtype,
                  "trust_remote_code": cfg.model.trust_remote_code, "weight_files": files,
                  "config_sha256": hashlib.sha256(config_json.read_bytes()).hexdigest()},
        "calib": raw["calib"], "calib_tokens_sha256": calib_tokens_sha256,
        "sparse": raw["sparse"], "seed": cfg.base.seed, "device": torch.device(device).type,
    }


def _digest(state: dict) -> str:
    """The sha256 of a state's content (keys sorted), stored beside it: an edited state.json
    (a changed plan or next block) is never resumed from."""
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def _flat(value, prefix="") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def differing_keys(stored: dict, current: dict) -> List[str]:
    """Dotted keys whose values differ between two fingerprints (e.g. 'sparse.weight.sparsity')."""
    a, b = _flat(stored), _flat(current)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))


def rng_states() -> dict:
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": [version, list(state), gauss],
              "numpy": [name, keys.tolist(), pos, has_gauss, cached],
              "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        states["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return states


@dataclass
class ResumePoint:
    next_block: int
    hidden: List[torch.Tensor]  # the activations entering next_block, one tensor per batch
    plan: dict  # llmc.sparse.allocation.plan_to_dict
    carried: dict
    rng: dict
    shard_sha256: Dict[str, str]  # the finished blocks' shards, verified
    model_sha256: str  # the checkpoint the finished blocks were pruned from

    def restore_rng(self) -> None:
        version, state, gauss = self.rng["python"]
        random.setstate((version, tuple(state), gauss))
        name, keys, pos, has_gauss, cached = self.rng["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(self.rng["torch"], dtype=torch.uint8))
        if "cuda" in self.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8)
                                          for s in self.rng["cuda"]])


class ResumeState:
    def __init__(self, directory, fingerprint: dict, num_blocks: int, world: World = World()):
        self.directory = Path(directory)
        self.world = world
        if world.distributed:  # the windows each rank's activations hold depend on it
            fingerprint = {**fingerprint, "ranks": world.size}
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back
        self.num_blocks = num_blocks
        self.seconds = 0.0  # time in save(), and the part of it spent in fsync
        self.fsync_seconds = 0.0

    def load(self, overwrite: bool) -> Optional[ResumePoint]:
        """The point an interrupted run reached, or None to start at block 0. Under torchrun
        rank 0 reads and judges state.json and every rank reads its own activations; unless
        all of them can, every rank starts over."""
        world = self.world
        state = world.broadcast_object(self._load_state(overwrite) if world.leads else None)
        if state is None:
            return None
        try:
            point = self._point(state)
        except (OSError, ValueError, KeyError, TypeError) as err:
            rank = f"rank {world.rank}: " if world.distributed else ""
            logger.warning(f"{rank}the resume state in {self.directory} is incomplete ({err}); "
                           "starting over")
            point = None
        if world.all_true(point is not None):
            return point
        if world.leads:
            self.clear()
        world.barrier()  # cleared before any rank writes a new state
        return None

    def _rank_name(self, next_block: int) -> str:
        name = ACTIVATIONS.format(next_block)
        if self.world.distributed:
            name = name.replace(".safetensors", f"-rank{self.world.rank}.safetensors")
        return name

    def _point(self, state: dict) -> ResumePoint:
        """The point `state` names, with this rank's activations entering its next block, once
        every file it relies on has the sha256 it was written with (rank 0 checks the shards,
        each rank its activations)."""
        next_block = int(state["next_block"])
        if not state.get("model_sha256"):
            raise ValueError("the interrupted run stopped before the checkpoint's sha256 was "
                             "known, so the weights its blocks were pruned from cannot be "
                             "verified")
        name = self._rank_name(next_block)
        shards = dict(state["shards"])
        own = {name: state["activations_sha256"][self.world.rank]}
        if self.world.leads:
            own.update({str(Path("..") / SHARDS / n): d for n, d in shards.items()})
        for file, recorded in own.items():
            if sha256_of(self.directory / file) != recorded:
                raise ValueError(f"{(self.directory / file).resolve()} changed since the "
                                 "interrupted run wrote it (its sha256 differs)")
        hidden = self._read_activations(name)
        point = ResumePoint(next_block, hidden, state["plan"], state["carried"], state["rng"],
                            shards, state["model_sha256"])
        if self.world.leads:
            logger.info(f"resuming at block {point.next_block} of "
                        f"{state.get('num_blocks', self.num_blocks)}: blocks 0 "
                        f"to {point.next_block - 1} were finished by an interrupted run")
        return point

    def _load_state(self, overwrite: bool) -> Optional[dict]:
        """state.json when it reads back and is for this run (else None, or an error when it
        is another run's and not `overwrite`)."""
        path = self.directory / STATE
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text())
            stored = state["fingerprint"]
            int(state["next_block"])
            if state.pop("state_sha256", None) != _digest(state):
                raise ValueError("its content is not what was written: edited since, or from "
                                 "an llmc that did not checksum it")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            logger.warning(f"the resume state {path} does not read ({err}); starting over")
            self.clear()
            return None
        differs = differing_keys(stored, self.fingerprint)
        if differs:
            if not overwrite:
                raise LlmcError(self._refusal(stored, differs))
            logger.warning(f"discarding the resume state of an interrupted run with another "
                           f"{', '.join(differs[:6])} (save.overwrite: True)")
            self.clear()
            return None
        return state

    def _refusal(self, stored: dict, differs: List[str]) -> str:
        if "ranks" in differs:
            was, now = stored.get("ranks", 1), self.fingerprint.get("ranks", 1)
            return (f"save.save_path holds the resume state of an interrupted run on {was} "
                    f"rank(s), and this run has {now}: each rank's saved activations are its "
                    f"own windows, so rerun it with {was} rank(s) (torchrun --nproc_per_node "
                    f"{was}, or without torchrun for 1) to resume it, or set save.overwrite: "
                    "True to start over")
        return (f"save.save_path holds the resume state of an interrupted run with another "
                f"{', '.join(differs[:6])}{' ...' if len(differs) > 6 else ''}; rerun it "
                "with the same model, calibration, method settings and seed to resume it, "
                "or set save.overwrite: True to start over (or choose another save.save_path)")

    def _read_activations(self, name: str) -> List[torch.Tensor]:
        entries = tensor_entries(self.directory / name)
        return [read_tensor(entries[str(i)]) for i in range(len(entries))]

    def save(self, next_block: int, hidden: List[torch.Tensor], plan: dict, carried: dict,
             shard_sha256: Dict[str, str], model_sha256: Optional[str]) -> None:
        """Record that every block before `next_block` is finished (see the module doc): with
        the sha256 of every file a rerun relies on (the shards of blocks 0 .. next_block-1,
        `shard_sha256` {name: sha256} as the handle wrote them; each rank's activations) and of
        the checkpoint (`model_sha256`, once the record's background hash has it; None before)."""
        start, timing, world = time.perf_counter(), {}, self.world
        self.directory.mkdir(parents=True, exist_ok=True)
        name = self._rank_name(next_block)
        digest = hashlib.sha256()
        write_tensors(self.directory / name, ((str(i), h) for i, h in enumerate(hidden)), timing,
                      digest)
        activations_sha256 = world.collect(digest.hexdigest())  # on disk on every rank
        if world.leads:
            state = json.loads(json.dumps({  # as it reads back, for its own checksum
                "fingerprint": self.fingerprint, "next_block": next_block,
                "num_blocks": self.num_blocks, "activations": ACTIVATIONS.format(next_block),
                "activations_sha256": activations_sha256, "shards": dict(shard_sha256),
                "model_sha256": model_sha256,
                "plan": plan, "carried": carried, "rng": rng_states()}))
            write_text(self.directory / STATE,
                       json.dumps({**state, "state_sha256": _digest(state)}), timing)
            fsync_dir(self.directory, timing)  # the rename over state.json: the commit point
        world.barrier()  # committed: the activations it no longer names may go
        suffix = f"-rank{world.rank}.safetensors" if world.distributed else ".safetensors"
        for old in self.directory.glob(f"activations-*{suffix}"):
            if old.name != name and (world.distributed or "-rank" not in old.name):
                old.unlink()
        self.seconds += time.perf_counter() - start
        self.fsync_seconds += timing.get("fsync", 0.0)

    def clear(self) -> None:
        """Remove the state and its activations (not the shards beside them)."""
        for path in [self.directory / STATE, *self.directory.glob("activations-*"),
                     *self.directory.glob(".activations-*"), *self.directory.glob(f".{STATE}.*")]:
            path.unlink(missing_ok=True)
        if self.directory.is_dir():
            fsync_dir(self.directory)
