"""A Config from YAML, a dict or keyword sections: read (llmc.config.yaml_text), `--set a.b=c`
overrides applied, typed (llmc.config.typed) and validated (llmc.config.checks) before any heavy
work. The registries fill themselves on first use."""
from typing import Optional

from ..errors import ConfigError
from .checks import validate, validate_sparse
from .schema import Config, SparseCfg
from .typed import apply_override, build
from .yaml_text import read_config_file


def sparse_config(**raw) -> SparseCfg:
    """A validated SparseCfg from keys as written under `sparse:` in YAML, e.g.
    sparse_config(method="SparseGPT", blocksize=16, weight={"sparsity_type": "2:4"})."""
    return validate_sparse(build(SparseCfg, raw, "sparse"))


def read_raw(path: str):
    """The raw values of YAML file `path`: a mapping of sections, or a ConfigError."""
    if not path:
        raise ConfigError("no config given; pass --config FILE.yml")
    raw = read_config_file(path)
    if raw is None:
        raise ConfigError(f"config file '{path}' holds no settings (it is empty or only "
                          "comments); start from one in configs/sparse/")
    if not isinstance(raw, dict):
        raise ConfigError(f"config '{path}' must be a mapping of sections (base, model, calib, "
                          f"eval, sparse, save) at its top level, got {_kind(raw)}")
    return raw


def load_config(path: Optional[str] = None, overrides=(), raw: Optional[dict] = None) -> Config:
    """Read YAML `path` (or take `raw`), apply overrides, build and validate a Config. The
    registries (methods, model types, datasets, samplers) fill themselves on first use."""
    if raw is None:
        raw = read_raw(path)
    elif not isinstance(raw, dict):
        raise ConfigError(f"config '{path}' must be a mapping of sections (base, model, calib, "
                          f"eval, sparse, save) at its top level, got {_kind(raw)}")
    for assignment in overrides:
        apply_override(raw, assignment, schema=Config)
    return validate(build(Config, raw))


def _kind(value) -> str:
    if isinstance(value, list):
        return "a list"
    return f"the {type(value).__name__} {value!r}"
