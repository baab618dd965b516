"""The config schema: every YAML key, its type and default live here, and nowhere else.

`load_config(path, overrides)` reads YAML (anchors work), applies `--set a.b=c` overrides, builds
typed dataclasses and validates everything that can be checked before heavy work starts.
This module imports no torch itself; the registries it consults import their packages (methods,
adapters, datasets) the first time they are read.
"""
import dataclasses
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from .config_io import (apply_override, build, field_default, parse_yaml, to_dict,  # noqa: F401
                        yaml_key)
from .config_yaml import read_config_file
from .distributed import check_ranks, env_world_size
from .errors import ConfigError
from .registry import BUILTIN_MODELS, DATASETS, METHODS, MODELS, PREPROCS, closest

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
    type: str = "Llama"
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
    """{YAML key: type hint} of every key a registered method declares under `sparse:` (its
    Settings dataclass, next to its maths): the rest of the sparse schema."""
    return {key: hint for key, (hint, _, _) in declared_settings().items()}


def declared_settings() -> Dict[str, Tuple[object, object, Tuple[str, ...]]]:
    """{YAML key: (type hint, field, names of the methods whose Settings have it)}. A key two
    methods declare must mean the same: same type and default (e.g. MixGPT's Settings extend
    SparseGPT's, so both have blocksize)."""
    import typing

    found = {}
    for name in sorted(METHODS):
        settings = METHODS[name].Settings
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
    method: str = "Wanda"
    weight: WeightCfg = field(default_factory=WeightCfg)
    sparsity_out: bool = False  # True: next block sees the pruned block's outputs
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
        """The method classes whose settings this run uses: the method, and what it composes
        (OWL: its base)."""
        return METHODS.lookup(self.method, "sparse.method").parts(self)

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
        return {"method": self.method, "weight": to_dict(self.weight),
                "sparsity_out": self.sparsity_out,
                **{key: to_dict(value) for key, value in self.in_effect().items()}}


@dataclass
class SaveCfg:
    save_trans: bool = False
    save_path: str = "./save"
    overwrite: bool = False


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


# ---------------------------------------------------------------- validation


def _check_path(path, key, what):
    if not path:
        raise ConfigError(f"{key} is not set; point it at {what}")
    if not os.path.exists(os.path.expanduser(path)):
        raise ConfigError(f"{key}: '{path}' does not exist; point it at {what}")


def check_seed(seed: int, key: str) -> None:
    """A seed every generator llmc seeds accepts (numpy's is the narrowest)."""
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{key} must be an integer in [0, 2^32), got {seed}")


def validate(cfg: Config) -> Config:
    """Everything checkable without loading a model or data. Raises one ConfigError."""
    check_seed(cfg.base.seed, "base.seed")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.base.device):
        raise ConfigError(f"base.device '{cfg.base.device}' must be auto, cpu, cuda or cuda:N")
    if cfg.base.offload_activations not in (True, False, "auto", "disk"):
        raise ConfigError("base.offload_activations must be auto, true, false or disk")
    if not cfg.base.collective_timeout > 0:
        raise ConfigError(f"base.collective_timeout must be > 0 seconds, got "
                          f"{cfg.base.collective_timeout}")
    check_ranks(cfg.calib, env_world_size())

    # Checkpoints whose modeling code is not part of transformers (Baichuan) need permission.
    MODELS.lookup(cfg.model.type, "model.type").check_remote_code_allowed(
        cfg.model.trust_remote_code)
    if cfg.model.load not in MODEL_LOADS:
        raise ConfigError(f"model.load '{cfg.model.load}' must be one of "
                          f"{', '.join(MODEL_LOADS)}{closest(cfg.model.load, MODEL_LOADS)}")
    if cfg.model.torch_dtype not in DTYPES:
        raise ConfigError(f"model.torch_dtype '{cfg.model.torch_dtype}' must be one of "
                          f"{', '.join(DTYPES)}{closest(cfg.model.torch_dtype, DTYPES)}")
    path = cfg.model.path
    if path and path.startswith("builtin:"):
        BUILTIN_MODELS.lookup(path[len("builtin:"):], "model.path builtin")
    else:
        _check_path(path, "model.path", "a local Hugging Face model directory "
                    "(or builtin:smollm2-135m)")

    _validate_calib(cfg)
    _validate_eval(cfg)
    _validate_sparse(cfg)
    if not cfg.save.save_path:
        raise ConfigError("save.save_path is empty; set a directory for results")
    return cfg


def _validate_calib(cfg):
    calib = cfg.calib
    if calib.type != "txt":
        raise ConfigError(f"calib.type '{calib.type}': only 'txt' calibration data is supported")
    spec = DATASETS.lookup(calib.name, "calib.name")
    PREPROCS.lookup(calib.preproc, "calib.preproc")  # a Sampler (llmc.data.preproc)
    check_seed(calib.seed, "calib.seed")
    if calib.n_samples < 1:
        raise ConfigError(f"calib.n_samples must be >= 1, got {calib.n_samples}")
    if calib.seq_len < 1:
        raise ConfigError(f"calib.seq_len must be >= 1, got {calib.seq_len}")
    if calib.bs == 0 or calib.bs < -1:
        raise ConfigError(f"calib.bs must be -1 (one batch) or >= 1, got {calib.bs}")
    if calib.bs != 1 and PREPROCS[calib.preproc].variable_length:
        raise ConfigError(f"calib.bs: {calib.bs} needs windows of one length, but preproc "
                          f"'{calib.preproc}' yields windows of different lengths; use bs: 1")
    method = METHODS.get(cfg.sparse.method)
    if method is not None:
        if not method.calibrates(cfg.sparse):
            return  # the method uses no calibration data (e.g. Magnitude): nothing to check
        method.check_calibration(cfg.sparse, calib)
    _refuse_unread_path("calib", calib.name, spec.needs_path, calib.path, calib.download)
    if spec.needs_path and not calib.download:
        _check_path(calib.path, "calib.path", f"a local copy of '{calib.name}' "
                    "(or set calib.download: True)")


def _refuse_unread_path(section, names, needs_path, path, download, key=None):
    """A path the run would not read is a config that says what the run did not do: the user
    believes the data comes from that file."""
    key = key or f"{section}.path"
    if path is None:
        return
    if not needs_path:
        raise ConfigError(f"{key} is set to '{path}' but {section}.name '{names}' reads no file "
                          "(the built-in corpus); set the name to the dataset the file holds "
                          f"(c4, wikitext2, ptb{', pileval' if section == 'calib' else ''}) or "
                          f"remove {key}")
    if download:
        raise ConfigError(f"{key} is set to '{path}' but {section}.download: True reads the "
                          f"hub copy instead; remove one of them")


def _validate_eval(cfg):
    ev = cfg.eval
    if ev.type != "ppl":
        raise ConfigError(f"eval.type '{ev.type}': only 'ppl' (perplexity) is supported")
    for pos in ev.eval_pos:
        if pos not in EVAL_POSITIONS:
            raise ConfigError(f"eval.eval_pos '{pos}' is not one of {', '.join(EVAL_POSITIONS)}"
                              f"{closest(pos, EVAL_POSITIONS)}")
    if not ev.eval_pos:
        return
    if not ev.names:
        raise ConfigError("eval.name is empty; name at least one dataset or set eval_pos: []")
    repeated = sorted({name for name in ev.names if ev.names.count(name) > 1})
    if repeated:  # one result per name: the second evaluation would overwrite the first
        raise ConfigError(f"eval.name lists '{repeated[0]}' more than once; list it once")
    if isinstance(ev.path, dict):
        for name in ev.path:  # a misspelt name would be ignored, its dataset left without a path
            if name not in DATASETS:
                raise ConfigError(f"eval.path has an entry for '{name}', which is no dataset"
                                  f"{closest(name, DATASETS)}; known: "
                                  f"{', '.join(sorted(DATASETS))}")
    reading = [name for name in ev.names if DATASETS.lookup(name, "eval.name").needs_path]
    if isinstance(ev.path, dict):
        for name, path in ev.path.items():
            _refuse_unread_path("eval", name, DATASETS[name].needs_path, path, ev.download,
                                f"eval.path.{name}")
    else:
        _refuse_unread_path("eval", ", ".join(ev.names), bool(reading), ev.path, ev.download)
    for name in ev.names:
        spec = DATASETS.lookup(name, "eval.name")
        if not spec.supports_eval:
            evaluable = sorted(n for n, s in DATASETS.items() if s.supports_eval)
            raise ConfigError(f"eval.name '{name}' has no evaluation split; use one of "
                              f"{', '.join(evaluable)}")
        if spec.needs_path and not ev.download:
            _check_path(ev.path_for(name), f"eval.path (for {name})",
                        f"a local copy of '{name}' (or set eval.download: True)")
    if ev.bs < 1 or ev.seq_len < 2:
        raise ConfigError(f"eval.bs must be >= 1 and eval.seq_len >= 2, got {ev.bs}, {ev.seq_len}")
    if ev.max_windows is not None and ev.max_windows < 1:
        raise ConfigError(f"eval.max_windows must be >= 1 or null, got {ev.max_windows}")


def _validate_sparse(cfg):
    validate_sparse(cfg.sparse)


def validate_sparse(sp: SparseCfg) -> SparseCfg:
    """The common keys, then the method's own checks of its settings (and its parts'), then no
    setting the config gives is one the method would silently ignore."""
    method = METHODS.lookup(sp.method, "sparse.method")
    s = sp.weight.sparsity
    if not 0 <= s < 1:
        raise ConfigError(f"sparse.weight.sparsity must be in [0, 1), got {s}")
    kind = sp.weight.sparsity_type
    if kind != "unstructured":
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", kind)
        if not match:
            raise ConfigError(f"sparse.weight.sparsity_type '{kind}' must be 'unstructured' or "
                              "'N:M' such as '2:4'")
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ConfigError(f"sparse.weight.sparsity_type '{kind}': N:M needs 0 < N < M "
                              "(N of every M consecutive weights are zeroed), e.g. '2:4'")
        sp.weight.sparsity_type = f"{n}:{m}"
    method.check_config(sp)
    _refuse_settings_not_in_effect(sp)
    return sp


def _refuse_settings_not_in_effect(sp: SparseCfg) -> None:
    """A setting the config gives that the chosen method does not read would be silently
    ignored (e.g. wbits: 4 with Wanda quantizes nothing, use_variant: true with SparseGPT), so it
    is an error naming who uses it, whatever its value: config.yml records the settings in
    effect, and a run's config should say nothing it did not do."""
    used = sp.in_effect()
    declared = declared_settings()
    parts = [part.__name__ for part in sp.parts()]
    chosen = sp.method if parts == [sp.method] else f"{sp.method} (over {', '.join(parts[1:])})"
    for key in sp.settings:
        users = declared[key][2]
        if key not in used:
            raise ConfigError(f"sparse.{key} is a setting of {' and '.join(users)}; {chosen} "
                              f"does not use it: remove it, or set sparse.method to "
                              f"{' or '.join(users)}")


def sparse_config(**raw) -> SparseCfg:
    """A validated SparseCfg from keys as written under `sparse:` in YAML, e.g.
    sparse_config(method="SparseGPT", blocksize=16, weight={"sparsity_type": "2:4"})."""
    return validate_sparse(build(SparseCfg, raw, "sparse"))


# ---------------------------------------------------------------- entry point


def load_config(path: Optional[str] = None, overrides=(), raw: Optional[dict] = None) -> Config:
    """Read YAML `path` (or take `raw`), apply overrides, build and validate a Config. The
    registries (methods, model types, datasets, samplers) fill themselves on first use."""
    if raw is None:
        if not path:
            raise ConfigError("no config given; pass --config FILE.yml")
        raw = read_config_file(path)
        if raw is None:
            raise ConfigError(f"config file '{path}' holds no settings (it is empty or only "
                              "comments); start from one in configs/sparse/")
    if not isinstance(raw, dict):
        raise ConfigError(f"config '{path}' must be a mapping of sections (base, model, calib, "
                          f"eval, sparse, save) at its top level, got {_kind(raw)}")
    for assignment in overrides:
        apply_override(raw, assignment, schema=Config)
    return validate(build(Config, raw))


def _kind(value) -> str:
    if isinstance(value, list):
        return "a list"
    return f"the {type(value).__name__} {value!r}"
