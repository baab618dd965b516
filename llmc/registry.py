"""Name → object tables: methods, model adapters, datasets, samplers and statistics are chosen by
name in YAML (or by a method's `needs`).

Each table fills itself: the first time it is read, it imports the package whose modules register
its entries, so `llmc.config.load_config` (or any entry point) works from a bare import.
"""
import difflib
import importlib
from collections.abc import Mapping

from .errors import ConfigError


def closest(name, choices):
    """' (did you mean X?)' for the nearest valid choice, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    if not match:
        lowered = {str(c).lower(): str(c) for c in choices}
        if str(name).lower() in lowered:
            match = [lowered[str(name).lower()]]
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry(Mapping):
    """A read-only mapping filled by a decorator, that imports `package` (whose modules register
    the entries) the first time it is read, and whose lookup error lists what exists."""

    def __init__(self, kind, package):
        self.kind = kind
        self._package = package
        self._entries = {}
        self._filled = False

    def _fill(self):
        if not self._filled:
            self._filled = True  # first: the package's own imports may read this table
            importlib.import_module(self._package)

    def register(self, name):
        def add(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = obj
            return obj

        return add

    def __getitem__(self, name):
        self._fill()
        return self._entries[name]

    def __iter__(self):
        self._fill()
        return iter(self._entries)

    def __len__(self):
        self._fill()
        return len(self._entries)

    def lookup(self, name, key=None):
        if name not in self:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} '{name}'{closest(name, self)}; "
                f"known: {', '.join(sorted(self))}"
            )
        return self[name]


METHODS = Registry("method", "llmc.sparse")
STEPS = Registry("step", "llmc.sparse")  # sparse.refine / sparse.update (llmc.sparse.steps)
STRUCTURES = Registry("structured method", "llmc.structure")  # sparse.structure
MODELS = Registry("model type", "llmc.models")
DATASETS = Registry("dataset", "llmc.data")
PREPROCS = Registry("preproc", "llmc.data")
BUILTIN_MODELS = Registry("built-in model", "llmc.models")
STATISTICS = Registry("statistic", "llmc.runner.stats")
