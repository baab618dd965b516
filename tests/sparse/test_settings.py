"""Each method owns its settings: the schema, the checks and the record are assembled from the
registered methods' declarations, so a new method with its own keys needs no edit elsewhere."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from llmc.config import declared_settings, load_config, sparse_config
from llmc.config.doc import table
from llmc.config.typed import setting
from llmc.errors import ConfigError
from llmc.registry import METHODS
from llmc.sparse import Sparsifier, build_method

# every registered method that prunes weights (`none` prunes none: tests/sparse/test_none.py)
PRUNING_METHODS = sorted(name for name in METHODS if METHODS[name].PRUNES)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", PRUNING_METHODS)
def test_each_method_builds_with_its_defaults_and_records_only_its_settings(name):
    cfg = sparse_config(method=name)
    method = build_method(cfg)
    assert isinstance(method.settings, type(method).Settings)
    own = {f.metadata.get("key", f.name) for part in cfg.parts()
           for f in dataclasses.fields(part.Settings)}
    assert set(cfg.as_yaml()) == {"method", "weight", "sparsity_out"} | own  # no other's keys


def test_composed_methods_use_the_settings_of_each_part():
    owl = sparse_config(method="OWL", base="SparseGPT", blocksize=16)
    assert [part.__name__ for part in owl.parts()] == ["OWL", "SparseGPT"]
    assert build_method(owl).base.settings.blocksize == 16
    assert owl.as_yaml()["blocksize"] == 16 and "use_variant" not in owl.as_yaml()
    mixgpt = sparse_config(method="MixGPT", wbits=4)
    assert build_method(mixgpt).settings.wbits == 4  # MixGPT is SparseGPT's pass: its keys too


def test_another_methods_key_is_refused_even_at_its_default():
    # set explicitly, a key the method does not read would be ignored whatever its value
    with pytest.raises(ConfigError, match="sparse.blocksize is a setting of MixGPT and SparseGPT; "
                                          "Wanda does not use it"):
        sparse_config(method="Wanda", blocksize=128)
    with pytest.raises(ConfigError, match="sparse.use_variant is a setting of Wanda; SparseGPT "
                                          "does not use it"):
        sparse_config(method="SparseGPT", use_variant=False)
    with pytest.raises(ConfigError,
                       match=r"sparse.blocksize is a setting of .*OWL \(over Wanda\) does not"):
        sparse_config(method="OWL", base="Wanda", blocksize=64)


@dataclasses.dataclass
class _ToySettings(Sparsifier.Settings):
    keep_every: int = setting(3, "keep every n-th weight")

    def check(self, weight_cfg):
        if self.keep_every < 1:
            raise ConfigError("sparse.keep_every must be >= 1")


class _Toy(Sparsifier):
    Settings = _ToySettings
    needs = ("input_norms",)


@pytest.fixture
def toy_method():
    """A method registered for one test only (the registry is restored after it)."""
    METHODS.register("Toy")(_Toy)
    yield _Toy
    del METHODS._entries["Toy"]


def test_a_new_methods_settings_reach_schema_checks_record_and_docs(toy_method):
    cfg = sparse_config(method="Toy", keep_every=5)
    assert build_method(cfg).settings.keep_every == 5
    assert cfg.as_yaml()["keep_every"] == 5
    with pytest.raises(ConfigError, match="keep_every must be >= 1"):
        sparse_config(method="Toy", keep_every=0)
    with pytest.raises(ConfigError, match="sparse.keep_every must be an integer"):
        sparse_config(method="Toy", keep_every="five")
    with pytest.raises(ConfigError, match="unknown key 'sparse.keep_evry'.*keep_every"):
        sparse_config(method="Toy", keep_evry=5)
    assert "| `keep_every` | 3 | Toy | keep every n-th weight |" in table()


def test_a_method_needing_an_unknown_statistic_fails_when_built(toy_method):
    toy_method.needs = ("activations_of_the_moon",)
    try:
        with pytest.raises(ConfigError, match="needs the statistic 'activations_of_the_moon'.*"
                                              "known: hessian, input_gram, input_moments, "
                                              "input_norms"):
            build_method(sparse_config(method="Toy"))
    finally:
        toy_method.needs = ("input_norms",)


def test_one_key_declared_two_ways_is_an_error(toy_method):
    @dataclasses.dataclass
    class Clash(Sparsifier.Settings):
        blocksize: int = setting(64, "another meaning")

    class Clashing(Sparsifier):
        Settings = Clash

    METHODS.register("Clashing")(Clashing)
    try:
        with pytest.raises(ConfigError, match="sparse.blocksize is declared differently"):
            declared_settings()
    finally:
        del METHODS._entries["Clashing"]


def test_load_config_works_from_a_bare_import():
    """No package has to be imported first: each registry imports its own on first use."""
    code = ("from llmc.config import load_config\n"
            "cfg = load_config('configs/sparse/owl_sparsegpt.yml')\n"
            "print(cfg.sparse.method, cfg.model.type, cfg.calib.preproc)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OWL", "Llama", "random_window"]


def test_settings_dataclasses_document_every_key():
    for key, (_, f, users) in declared_settings().items():
        if not dataclasses.is_dataclass(f.default_factory() if f.default is dataclasses.MISSING
                                        else f.default):
            assert f.metadata.get("doc"), (key, users)
