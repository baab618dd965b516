"""The shipped OPT, BLOOM and Baichuan configs load once their placeholder paths are filled in,
and hold the settings their comments promise."""
from pathlib import Path

import pytest

from llmc.config import load_config
from llmc.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sparse"
FILES = sorted(str(p.relative_to(CONFIGS)) for d in ("opt_125m", "bloom_560m", "baichuan_7b")
               for p in (CONFIGS / d).glob("*.yml"))
TYPES = {"opt_125m": "OPT", "bloom_560m": "Bloom", "baichuan_7b": "Baichuan"}


@pytest.fixture
def local_paths(tmp_path):
    """Overrides pointing the placeholder paths at existing files and directories."""
    (tmp_path / "model").mkdir()
    (tmp_path / "c4-train.json.gz").write_bytes(b"")
    for name in ("wikitext2", "ptb", "c4"):
        (tmp_path / "eval" / name).mkdir(parents=True)
    return [f"model.path={tmp_path / 'model'}", f"calib.path={tmp_path / 'c4-train.json.gz'}",
            f"eval.path={tmp_path / 'eval'}", f"save.save_path={tmp_path / 'save'}"]


def test_every_model_has_its_configs():
    assert FILES == ["baichuan_7b/mixgpt.yml", "baichuan_7b/sparsegpt.yml", "baichuan_7b/wanda.yml",
                     "bloom_560m/magnitude.yml", "bloom_560m/sparsegpt.yml",
                     "bloom_560m/wanda.yml", "opt_125m/magnitude.yml", "opt_125m/sparsegpt.yml",
                     "opt_125m/wanda.yml"]


@pytest.mark.parametrize("name", FILES)
def test_config_loads_with_the_paper_setting(name, local_paths):
    with pytest.raises(ConfigError, match="does not exist"):  # placeholders until filled in
        load_config(str(CONFIGS / name))
    cfg = load_config(str(CONFIGS / name), local_paths)
    model_dir, method = name.split("/")
    assert cfg.model.type == TYPES[model_dir]
    assert cfg.sparse.method.lower() == method[:-len(".yml")]
    assert cfg.model.trust_remote_code is (model_dir == "baichuan_7b")
    assert (cfg.base.seed, cfg.calib.seed) == (0, 0)
    assert (cfg.calib.name, cfg.calib.preproc, cfg.calib.n_samples, cfg.calib.seq_len) == \
        ("c4", "c4_gptq", 128, 2048)
    assert cfg.eval.seq_len == 2048 and cfg.sparse.sparsity_out is True
    assert (cfg.sparse.weight.sparsity, cfg.sparse.weight.sparsity_type) == (0.5, "unstructured")
    if model_dir != "baichuan_7b":  # the SparseGPT repo's OPT / BLOOM evaluation
        assert cfg.eval.names == ["wikitext2", "ptb", "c4"]
    settings = cfg.sparse.in_effect()
    if cfg.sparse.method in ("SparseGPT", "MixGPT"):
        assert (settings["blocksize"], settings["percdamp"]) == (128, 0.01)
    if cfg.sparse.method == "MixGPT":
        mix = settings["mixgpt"]
        assert (mix.alpha, mix.granularity, mix.saliency, mix.sensitivity.n_samples) == \
            (0.1, "layer", "isc", 1)


def test_baichuan_config_without_permission_is_refused(local_paths):
    with pytest.raises(ConfigError, match="model.trust_remote_code: True"):
        load_config(str(CONFIGS / "baichuan_7b" / "wanda.yml"),
                    local_paths + ["model.trust_remote_code=False"])
