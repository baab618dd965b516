"""A Config from what a Python caller gives (llmc.prune, llmc.run): the path of a YAML file, a
dict of sections as YAML would hold them, or a Config built in Python; and overrides as
`--set` takes them. Every key is built and validated as from YAML (llmc.config.load), with the
same one-line ConfigError."""
import copy
import dataclasses
import os
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

from ..errors import ConfigError
from .checks import validate
from .load import read_raw
from .schema import Config, EvalCfg, SaveCfg
from .typed import apply_override, build, set_dotted
from .yaml_text import parse_yaml

ConfigSource = Union[str, "os.PathLike[str]", Mapping[str, Any], Config]
Overrides = Union[None, Mapping[str, Any], Iterable[str]]


def raw_config(config: ConfigSource) -> dict:
    """The raw sections of `config`: a YAML file read, a dict copied (the caller's is never
    changed), a Config written back as YAML keys."""
    if isinstance(config, Config):
        return config.to_dict()
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    if isinstance(config, (str, os.PathLike)):
        return read_raw(os.fspath(config))
    raise ConfigError(f"config must be the path of a YAML file, a dict of sections or an "
                      f"llmc Config, got {type(config).__name__}")


def apply_overrides(raw: dict, overrides: Overrides) -> None:
    """`overrides` into `raw`: a mapping {dotted key: value} (a string value is YAML text, as
    after `--set key=`; any other value is used as it is), or `--set` strings "key=value"."""
    if overrides is None:
        return
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a mapping {{'section.key': value}} or a list of "
                          f"'section.key=value' strings, got the string {overrides!r}")
    if isinstance(overrides, Mapping):
        for dotted, value in overrides.items():
            if not isinstance(dotted, str):
                raise ConfigError(f"overrides: the key {dotted!r} must be a dotted string such "
                                  "as 'sparse.weight.sparsity'")
            where = f"overrides['{dotted}']"
            if isinstance(value, str):
                value = parse_yaml(value, where, command_line=True) if value.strip() else None
            set_dotted(raw, dotted, value, where, schema=Config)
        return
    for assignment in overrides:
        if not isinstance(assignment, str):
            raise ConfigError(f"overrides: {assignment!r} must be a 'section.key=value' string")
        apply_override(raw, assignment, schema=Config)


def config_from(config: ConfigSource, overrides: Overrides = None, *,
                model_given: bool = False, calibration_given: bool = False,
                model_path: Optional[str] = None) -> Config:
    """A validated Config from `config` and `overrides`, as load_config makes from a file.
    `model_given`/`calibration_given`: the caller holds the model / gives the calibration data
    (llmc.config.checks.validate). `model_path`: model.path, whatever the config says."""
    return _validated(_raw_with(raw_config(config), overrides, model_path), model_given,
                      calibration_given)


def prune_config(config: ConfigSource, overrides: Overrides = None, *, model_given: bool = True,
                 calibration_given: bool = False,
                 model_path: Optional[str] = None) -> Tuple[Config, bool]:
    """(Config, whether the run writes its outputs) for llmc.prune, which evaluates and writes
    only what the config asks for: without eval.eval_pos there is no evaluation, and without
    save.save_path or save.save_trans nothing is written. A Config object asks for neither
    when its eval / save section is all defaults."""
    raw = raw_config(config)
    if isinstance(config, Config):  # what a Config built in Python leaves at its defaults
        for name, section in (("eval", EvalCfg()), ("save", SaveCfg())):
            if dataclasses.asdict(getattr(config, name)) == dataclasses.asdict(section):
                raw.pop(name, None)
    raw = _raw_with(raw, overrides, model_path)
    eval_section = raw.get("eval") if isinstance(raw.get("eval"), dict) else None
    if eval_section is None or "eval_pos" not in eval_section:
        raw["eval"] = {**(eval_section or {}), "eval_pos": []}
    save = raw.get("save") if isinstance(raw.get("save"), dict) else {}
    writes = "save_path" in save or save.get("save_trans") is True
    return _validated(raw, model_given, calibration_given), writes


def _raw_with(raw: dict, overrides: Overrides, model_path: Optional[str]) -> dict:
    apply_overrides(raw, overrides)
    if model_path is not None:
        set_dotted(raw, "model.path", model_path, "the model path given to llmc.prune", Config)
    return raw


def _validated(raw: dict, model_given: bool, calibration_given: bool) -> Config:
    return validate(build(Config, raw), model_given=model_given,
                    calibration_given=calibration_given)
