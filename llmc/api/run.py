"""llmc.run: exactly what `python -m llmc --config FILE --set ...` does (llmc.pipeline), from
Python: the checkpoint at model.path read (streamed or held, as model.load says), the outputs
written to save.save_path and committed, resumable, under torchrun on every rank. The CLI is
this function plus its one-line errors and signals (llmc.cli)."""
from ..config.given import ConfigSource, Overrides, config_from
from .result import Result


def run(config: ConfigSource, overrides: Overrides = None) -> Result:
    """Run `config` (a YAML file's path, a dict of sections, or a Config) with `overrides`
    ({"dotted.key": value} or ["dotted.key=value", ...], as `--set` takes them). Returns the
    record results.json holds (`Result.model` is None: the model is the saved one,
    `Result.saved_model`). Raises LlmcError (ConfigError for the config) with the one-line
    message the CLI prints."""
    from .. import pipeline

    # a Config object too is built again from its YAML keys: held to the file's checks
    return Result(None, pipeline.run(config_from(config, overrides)))
