"""The config: its schema (`schema.py`: every section, key, type and default), YAML text
(`yaml_text.py`), the typed build and `--set` overrides (`typed.py`), the checks that need no
model or data (`checks.py`), reading one (`load.py`), and one from what a Python caller gives:
a path, a dict or a Config, with overrides (`given.py`, for llmc.prune and llmc.run);
docs/config.md's method table is `doc.py`'s (`python -m llmc.config.doc --write
docs/config.md`). The imports run one way: yaml_text <- typed <- schema <- checks <- load <-
given."""
from .given import config_from
from .load import load_config, sparse_config
from .schema import (DTYPES, EVAL_POSITIONS, MODEL_LOADS, SEED_LIMIT, BaseCfg, CalibCfg, Config,
                     EvalCfg, ModelCfg, SaveCfg, SparseCfg, WeightCfg, declared_settings,
                     method_keys)
from .typed import apply_override, build, setting
from .yaml_text import parse_yaml

__all__ = ["load_config", "sparse_config", "config_from", "Config", "BaseCfg", "ModelCfg", "CalibCfg",
           "EvalCfg", "WeightCfg", "SparseCfg", "SaveCfg", "DTYPES", "EVAL_POSITIONS",
           "MODEL_LOADS", "SEED_LIMIT", "declared_settings", "method_keys", "apply_override",
           "build", "setting", "parse_yaml"]
