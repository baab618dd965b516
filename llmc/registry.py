"""Name → object tables: methods, model adapters, datasets, preprocs are chosen by name in YAML."""
import difflib

from .errors import ConfigError


def closest(name, choices):
    """' (did you mean X?)' for the nearest valid choice, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    if not match:
        lowered = {str(c).lower(): str(c) for c in choices}
        if str(name).lower() in lowered:
            match = [lowered[str(name).lower()]]
    return f" (did you mean '{match[0]}'?)" if match else ""


class Registry(dict):
    """A dict with a decorator to fill it and an error that lists what exists."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def register(self, name):
        def add(obj):
            if name in self:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self[name] = obj
            return obj

        return add

    def lookup(self, name, key=None):
        if name not in self:
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} '{name}'{closest(name, self)}; "
                f"known: {', '.join(sorted(self))}"
            )
        return self[name]


METHODS = Registry("method")
MODELS = Registry("model type")
DATASETS = Registry("dataset")
PREPROCS = Registry("preproc")
BUILTIN_MODELS = Registry("built-in model")
