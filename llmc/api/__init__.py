"""The Python API (docs/api.md): `prune` a model object in memory (`prune.py`, with the caller's
state kept as it was, `caller_state.py`; the model checked and wrapped, `model_given.py`; the
calibration data given as texts, a Dataset or token ids, `calibration.py`), `run` a config as
the CLI does (`run.py`); both return a `Result` (`result.py`); `model_dir` says where a model.path
is on disk (`model_dir.py`)."""
from .model_dir import model_dir
from .prune import prune
from .result import Result
from .run import run

__all__ = ["prune", "run", "Result", "model_dir"]
