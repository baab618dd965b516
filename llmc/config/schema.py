"""The config schema: every YAML key, its type and default live here, and nowhere else
(llmc.config.load reads, builds and validates a Config; llmc.config.checks holds the checks).
This module imports no torch itself; the registries it consults import their packages (methods,
adapters, datasets) the first time they are read.
"""
import dataclasses
import glob
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ..errors import ConfigError
from ..registry import DATASETS, METHODS, STEPS, STRUCTURES
from .typed import field_default, to_dict, yaml_key

EVAL_POSITIONS = ("pretrain", "transformed")
SEED_LIMIT = 2 ** 32  # numpy.random.seed takes [0, 2^32)
DTYPES = ("auto", "float32", "float16", "bfloat16")
MODEL_LOADS = ("auto", "stream", "memory")  # how a run holds the weights (llmc.models.stream)


@dataclass
class BaseCfg:
    seed: int = 42
    device: str = "auto"  # auto = cuda if available else cpu; or cpu, cuda, cuda:N
    # where calibration activations wait between blocks: auto, true (CPU), false (device), disk
    offload_activations: Union[bool, str] = "auto"
    # seconds a rank waits in a collective under torchrun before the run fails (docs/scaling.md)
    collective_timeout: float = 1800.0


@dataclass
class ModelCfg:
    type: str = "auto"  # auto: the table for config.json's model_type, or one discovered
    path: Optional[str] = None
    torch_dtype: str = "auto"
    trust_remote_code: bool = False  # run the checkpoint's own modeling code (Baichuan needs it)
    load: str = "auto"  # stream (weights read per part, blocks written as done), memory, auto


@dataclass
class CalibCfg:
    name: str = "pileval"
    type: str = "txt"
    download: bool = False
    path: Optional[str] = None
    n_samples: int = 128
    bs: int = 1  # windows per forward; -1 = all windows in one batch
    seq_len: int = 512
    preproc: str = "pileval_smooth"
    seed: int = 42
    # MoE: an expert routed fewer calibration tokens is measured on all tokens (docs/models.md)
    min_expert_tokens: int = 64


@dataclass
class EvalCfg:
    eval_pos: List[str] = field(default_factory=lambda: ["pretrain", "transformed"])
    name: Union[str, List[str]] = field(default_factory=lambda: ["wikitext2", "c4"])
    type: str = "ppl"
    download: bool = False
    path: Union[None, str, Dict[str, str]] = None
    bs: int = 1
    seq_len: int = 2048
    inference_per_block: bool = False
    max_windows: Optional[int] = None  # evaluate only the first N windows (None = all)
    # accuracy tasks after perplexity, at each eval_pos: cloze (llmc's own, offline), any
    # lm-eval task or group name, or a local lm-eval task YAML path (docs/eval.md)
    tasks: List[str] = field(default_factory=list)
    cloze_paragraphs: int = 500  # cloze: how many of the built-in held-out paragraphs
    num_fewshot: Optional[int] = None  # lm-eval tasks: None = each task's own default (0)
    limit: Optional[float] = None  # lm-eval tasks: the first N examples (a fraction if < 1)
    tasks_bs: int = 1  # lm-eval's batch size

    @property
    def names(self) -> List[str]:
        return [self.name] if isinstance(self.name, str) else list(self.name)

    def path_for(self, name: str) -> Optional[str]:
        """Where dataset `name`'s local copy is: path[name] for a dict; the path itself when only
        one dataset needs a path; else the entry path/name (llmc's layout), or the one file
        path/name.<suffix> when there is no such entry."""
        if self.path is None or isinstance(self.path, dict):
            return (self.path or {}).get(name)
        needing = [n for n in self.names if n in DATASETS and DATASETS[n].needs_path]
        if len(needing) <= 1:
            return self.path
        entry = os.path.join(self.path, name)
        files = sorted(glob.glob(glob.escape(entry) + ".*"))  # e.g. path/c4.json.gz
        return files[0] if not os.path.exists(entry) and len(files) == 1 else entry


@dataclass
class WeightCfg:
    sparsity: float = 0.5
    sparsity_type: str = "unstructured"  # or "N:M", e.g. "2:4"

    @property
    def n_m(self) -> Optional[Tuple[int, int]]:
        """(N, M) for N:M sparsity, None for unstructured."""
        if self.sparsity_type == "unstructured":
            return None
        n, m = self.sparsity_type.split(":")
        return int(n), int(m)


def method_keys() -> Dict[str, object]:
    """{YAML key: type hint} of every key a registered method or step declares under `sparse:`
    (its Settings dataclass, next to its maths): the rest of the sparse schema."""
    return {key: hint for key, (hint, _, _) in declared_settings().items()}


def declared_settings() -> Dict[str, Tuple[object, object, Tuple[str, ...]]]:
    """{YAML key: (type hint, field, names of the methods whose Settings have it)}, steps named
    as `refine: dsnot`. A key two of them declare must mean the same: same type and default (e.g.
    MixGPT's Settings extend SparseGPT's, so both have blocksize)."""
    import typing

    found = {}
    declarers = [(name, METHODS[name]) for name in sorted(METHODS)]
    declarers += [(f"{STEPS[name].KIND}: {name}", STEPS[name]) for name in sorted(STEPS)]
    declarers += [(f"structure: {name}", STRUCTURES[name]) for name in sorted(STRUCTURES)]
    for name, declarer in declarers:
        settings = declarer.Settings
        hints = typing.get_type_hints(settings)
        for f in dataclasses.fields(settings):
            key = yaml_key(f)
            if key in found:
                hint, first, users = found[key]
                if hint != hints[f.name] or field_default(first) != field_default(f):
                    raise ConfigError(f"sparse.{key} is declared differently by "
                                      f"{', '.join(users)} and {name}; one key, one meaning")
                found[key] = (hint, first, users + (name,))
            else:
                found[key] = (hints[f.name], f, (name,))
    return found


@dataclass
class SparseCfg:
    method: str = "Wanda"  # `none`: no unstructured pruning (a structured run alone)
    # a structured method run first (blocks, heads, channels removed: llmc.structure), or null
    structure: Optional[str] = None
    weight: WeightCfg = field(default_factory=WeightCfg)
    sparsity_out: bool = False  # True: next block sees the pruned block's outputs
    refine: Optional[str] = None  # a mask refinement after the method's score (dsnot)
    update: Optional[str] = None  # a weight update under the mask (admm, admm_gradual)
    # The keys methods declare (sparse.blocksize, sparse.owl, ...), written flat under `sparse:`
    # as llmc users always have: {YAML key: typed value} for those the config sets. A method
    # reads its own through settings_for(); defaults live in its Settings.
    settings: Dict[str, Any] = field(default_factory=dict, metadata={"extra_keys": method_keys})

    def settings_for(self, method_cls):
        """`method_cls.Settings` with the values this config sets, defaults for the rest."""
        return method_cls.Settings(**{f.name: self.settings[yaml_key(f)]
                                      for f in dataclasses.fields(method_cls.Settings)
                                      if yaml_key(f) in self.settings})

    def parts(self):
        """The classes whose settings this run uses: the method, what it composes (OWL: its
        base), and its steps (refine, update)."""
        from ..sparse.steps import step_classes
        structure = (STRUCTURES.lookup(self.structure, "sparse.structure"),) if self.structure \
            else ()
        return (structure + METHODS.lookup(self.method, "sparse.method").parts(self)
                + step_classes(self))

    def in_effect(self) -> Dict[str, Any]:
        """{YAML key: value} of every setting the run uses, defaults included."""
        found = {}
        for part in self.parts():
            settings = self.settings_for(part)
            for f in dataclasses.fields(settings):
                found.setdefault(yaml_key(f), getattr(settings, f.name))
        return found

    def as_yaml(self) -> dict:
        """As written in YAML: the common keys and the settings in effect (not other methods')."""
        steps = {kind: getattr(self, kind) for kind in ("refine", "update") if getattr(self, kind)}
        structure = {"structure": self.structure} if self.structure else {}
        return {**structure, "method": self.method, "weight": to_dict(self.weight),
                "sparsity_out": self.sparsity_out, **steps,
                **{key: to_dict(value) for key, value in self.in_effect().items()}}


@dataclass
class SaveCfg:
    save_trans: bool = False
    save_path: str = "./save"
    overwrite: bool = False
    # how the model is saved: hf (float weights, as loaded) or compressed-tensors (the
    # quantized Linears of a wbits run packed: llmc.packed)
    format: str = "hf"
    # after saving, measure the saved model against the checkpoint (llmc bench-model's
    # defaults) into results.json's `bench`
    bench: bool = False


@dataclass
class Config:
    base: BaseCfg = field(default_factory=BaseCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    calib: CalibCfg = field(default_factory=CalibCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    sparse: SparseCfg = field(default_factory=SparseCfg)
    save: SaveCfg = field(default_factory=SaveCfg)

    def to_dict(self) -> dict:
        """The config as YAML keys and plain values (loadable again with load_config(raw=...))."""
        return to_dict(self)
