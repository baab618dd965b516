"""A Config from what a Python caller gives (llmc.config.given): a dict or a Config object is
held to the YAML file's checks, with the same one-line errors; overrides as --set takes them."""
from pathlib import Path

import pytest
import yaml

import llmc
from conftest import error_line, tiny_model
from llmc.config import Config, SaveCfg, SparseCfg, config_from, load_config
from llmc.config.given import prune_config
from llmc.errors import ConfigError

SHIPPED = sorted(Path(__file__).parents[2].glob("configs/sparse/*.yml"))
SMALL = {"model": {"path": "builtin:smollm2-135m"}, "calib": {"name": "builtin"},
         "eval": {"eval_pos": []}, "sparse": {"method": "Wanda"}}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_config_rebuilt_from_its_keys_is_the_same(path):
    """What llmc.run does with a Config object (the CLI passes one): nothing changes."""
    cfg = load_config(str(path))
    assert config_from(cfg).to_dict() == cfg.to_dict()
    assert config_from(str(path)).to_dict() == cfg.to_dict()
    assert config_from(yaml.safe_load(path.read_text())).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("bad", [
    {"sparse": {"metod": "Wanda"}},
    {"sparse": {"method": "Wanda", "weight": {"sparsity": 1.5}}},
    {"sparse": {"method": "Wanda", "wbits": 4}},
    {"calib": {"n_samples": "many"}},
])
def test_a_bad_key_is_the_same_one_line_error_as_from_yaml(bad, tmp_path, cli):
    raw = {**SMALL, **{k: {**SMALL.get(k, {}), **v} for k, v in bad.items()}}
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(raw))
    code, stderr = cli("--config", path)
    assert code == 2
    with pytest.raises(ConfigError) as from_dict:
        llmc.prune(tiny_model("llama"), None, raw)
    assert error_line(stderr) == f"llmc: error: {from_dict.value}"
    with pytest.raises(ConfigError) as from_run:
        llmc.run(raw)
    assert str(from_run.value) == str(from_dict.value)


def test_overrides_as_a_mapping_or_as_set_strings():
    as_text = config_from(SMALL, {"sparse.weight.sparsity": "0.6", "sparse.weight.sparsity_type":
                                  "2:4"})
    as_values = config_from(SMALL, {"sparse.weight.sparsity": 0.6,
                                    "sparse.weight": {"sparsity_type": "2:4"}})
    as_set = config_from(SMALL, ["sparse.weight.sparsity=0.6", "sparse.weight.sparsity_type=2:4"])
    assert as_text.to_dict() == as_values.to_dict() == as_set.to_dict()
    assert as_set.sparse.weight.sparsity == 0.6 and as_set.sparse.weight.n_m == (2, 4)
    with pytest.raises(ConfigError, match=r"overrides\['sparse.weight'\]: sparse.weight is a "
                                          "section; null would"):
        config_from(SMALL, {"sparse.weight": None})
    with pytest.raises(ConfigError, match="sparse.weight.sparsity must be a number, got"):
        config_from(SMALL, {"sparse.weight.sparsity": [0.5]})
    with pytest.raises(ConfigError, match="overrides must be a mapping"):
        config_from(SMALL, "sparse.weight.sparsity=0.6")


def test_the_callers_dict_is_not_changed():
    raw = {"sparse": {"method": "Wanda", "weight": {"sparsity": 0.5}}, **{
        k: v for k, v in SMALL.items() if k != "sparse"}}
    copy = yaml.safe_load(yaml.safe_dump(raw))
    config_from(raw, {"sparse.weight.sparsity": 0.7})
    assert raw == copy


def test_a_config_object_is_checked_as_a_file_is():
    good = Config(sparse=SparseCfg(method="SparseGPT"))
    good.model.path, good.calib.name, good.eval.eval_pos = "builtin:smollm2-135m", "builtin", []
    assert config_from(good).sparse.method == "SparseGPT"
    good.sparse.weight.sparsity = "0.5"  # a string where YAML would hold a number
    with pytest.raises(ConfigError, match="sparse.weight.sparsity must be a number, got '0.5'"):
        config_from(good)
    with pytest.raises(ConfigError, match="sparse.method: unknown method 'Wnda' \\(did you "
                                          "mean 'Wanda'"):
        config_from(Config(sparse=SparseCfg(method="Wnda")), model_given=True)


def test_prune_evaluates_and_writes_only_what_the_config_asks():
    unasked, writes = prune_config({"sparse": {"method": "Wanda"}}, calibration_given=True)
    assert unasked.eval.eval_pos == [] and not writes
    defaults, writes = prune_config(Config(), calibration_given=True)
    assert defaults.eval.eval_pos == [] and not writes
    asked, writes = prune_config({"eval": {"eval_pos": ["transformed"], "name": "builtin"},
                                  "save": {"save_path": "out"}}, calibration_given=True)
    assert asked.eval.eval_pos == ["transformed"] and writes
    assert prune_config(Config(save=SaveCfg(save_trans=True)), calibration_given=True)[1]
    assert prune_config({}, {"save.save_path": "x"}, calibration_given=True)[1]
    with pytest.raises(ConfigError, match="eval.path"):  # the CLI's default: both, needs data
        config_from({"sparse": {"method": "Wanda"}}, model_given=True, calibration_given=True)
