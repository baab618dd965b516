"""llmc: prune large language models blockwise from a YAML config, or from Python.

    import llmc
    result = llmc.prune(model, tokenizer, "configs/sparse/wanda.yml", calibration=texts)
    llmc.run("configs/sparse/wanda.yml", overrides={"sparse.weight.sparsity": 0.6})

The parts: `api` (prune, run, Result), `config` (the typed config), `data` (calibration and
evaluation tokens), `models` (adapters, handles, loading), `runner` (the block loop), `sparse`
(the methods, one file each), `stages` and `pipeline` (a run, start to end), `eval`, `outputs`
and `save` (the save path and its one commit), `report` and `bench` (`llmc report`, `llmc
bench-model`), `cli` (the command line). docs/architecture.md maps them.
"""
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["prune", "run", "Result", "model_dir", "Config", "LlmcError", "ConfigError",
           "__version__"]

if TYPE_CHECKING:
    from .api import Result, model_dir, prune, run
    from .config import Config
    from .errors import ConfigError, LlmcError


def __getattr__(name):
    # Imported when first used: `import llmc` stays light (no torch) for `llmc report`.
    if name in ("prune", "run", "Result", "model_dir"):
        from . import api

        return getattr(api, name)
    if name == "Config":
        from .config import Config

        return Config
    if name in ("LlmcError", "ConfigError"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'llmc' has no attribute {name!r}")
