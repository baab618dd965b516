"""Config: defaults, YAML details, overrides, and one clear error for each kind of bad input."""
import textwrap

import pytest

from llmc.config import Config, apply_override, load_config, parse_yaml
from llmc.errors import ConfigError


@pytest.fixture
def raw(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    calib = tmp_path / "calib.jsonl"
    calib.write_text('{"text": "hello"}\n')
    return {
        "model": {"type": "Llama", "path": str(model)},
        "calib": {"name": "pileval", "path": str(calib)},
        "eval": {"name": "builtin"},
        "save": {"save_path": str(tmp_path / "save")},
    }


def test_defaults_live_in_the_schema(raw):
    cfg = load_config(raw=raw)
    assert isinstance(cfg, Config)
    assert (cfg.base.seed, cfg.base.device) == (42, "auto")
    assert (cfg.calib.n_samples, cfg.calib.seq_len, cfg.calib.preproc) == (128, 512, "pileval_smooth")
    assert cfg.eval.eval_pos == ["pretrain", "transformed"] and cfg.eval.seq_len == 2048
    assert cfg.sparse.method == "Wanda" and cfg.sparse.weight.sparsity == 0.5
    assert cfg.sparse.sparsity_out is False and cfg.save.overwrite is False


def test_yaml_anchors_and_unquoted_n_m(tmp_path, raw):
    text = textwrap.dedent(f"""
        base: {{seed: &seed 7}}
        model: {{type: Llama, path: {raw['model']['path']}}}
        calib: {{name: pileval, path: {raw['calib']['path']}, seed: *seed}}
        eval: {{eval_pos: []}}
        sparse:
            weight: {{sparsity_type: 2:4}}
    """)
    path = tmp_path / "c.yml"
    path.write_text(text)
    cfg = load_config(str(path))
    assert cfg.calib.seed == 7
    assert cfg.sparse.weight.sparsity_type == "2:4"  # not YAML 1.1's base-60 integer 124
    assert cfg.sparse.weight.n_m == (2, 4)
    assert parse_yaml("x: 0x10")["x"] == 16 and parse_yaml("x: 12")["x"] == 12


def test_overrides_are_yaml_and_dotted(raw):
    cfg = load_config(raw=raw, overrides=["sparse.weight.sparsity=0.6", "calib.n_samples=16",
                                          "eval.name=[builtin]", "sparse.method=Magnitude"])
    assert cfg.sparse.weight.sparsity == 0.6 and cfg.calib.n_samples == 16
    assert cfg.eval.names == ["builtin"] and cfg.sparse.method == "Magnitude"
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_override({}, "sparse.weight.sparsity")


@pytest.mark.parametrize("override,message", [
    ("sparse.weight.sparsty=0.5", "unknown key 'sparse.weight.sparsty'.*did you mean 'sparsity'"),
    ("sparse.methd=Wanda", "unknown key 'sparse.methd'.*did you mean 'method'"),
    ("sparse.weight.sparsity=1.5", r"sparsity must be in \[0, 1\), got 1.5"),
    ("sparse.weight.sparsity=-0.1", r"sparsity must be in \[0, 1\)"),
    ("sparse.weight.sparsity_type=3:2", "'3:2': N:M needs 0 < N < M"),
    ("sparse.weight.sparsity_type=0:4", "N:M needs 0 < N < M"),
    ("sparse.weight.sparsity_type=half", "must be 'unstructured' or 'N:M'"),
    ("sparse.method=wanda", "unknown method 'wanda'.*did you mean 'Wanda'"),
    ("model.type=Lama", "unknown model type 'Lama'.*did you mean 'Llama'"),
    ("model.path=/no/such/model", "model.path: '/no/such/model' does not exist"),
    ("model.path=builtin:gpt5", "unknown built-in model 'gpt5'"),
    ("calib.path=/no/such/data.jsonl", "calib.path: '/no/such/data.jsonl' does not exist"),
    ("calib.name=c5", "unknown dataset 'c5'.*did you mean 'c4'"),
    ("calib.preproc=c4_gptj", "unknown preproc 'c4_gptj'.*did you mean 'c4_gptq'"),
    ("calib.bs=2", "pileval_smooth.*use bs: 1"),
    ("eval.eval_pos=[pretrain, fake_quant]", "eval_pos 'fake_quant'"),
    ("eval.name=pileval", "'pileval' has no evaluation split"),
    ("eval.name=[wikitext2]", r"eval.path \(for wikitext2\) is not set"),
    ("sparse.weight.sparsity=abc", "sparse.weight.sparsity must be a number, got 'abc'"),
    ("sparse.sparsity_out=maybe", "sparsity_out must be true/false"),
    ("base.device=tpu", "base.device 'tpu'"),
    ("model.torch_dtype=fp16", "torch_dtype 'fp16'"),
    ("sparse.wbits=4", "sparse.wbits is a setting of .*SparseGPT; Wanda does not use it"),
    ("sparse.owl.lamda=0.1", "unknown key 'sparse.owl.lamda'.*did you mean 'lambda'"),
])
def test_bad_input_names_the_problem(raw, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw=raw, overrides=[override])


def test_variant_with_n_m_is_rejected(raw):
    with pytest.raises(ConfigError, match="use_variant applies to unstructured"):
        load_config(raw=raw, overrides=["sparse.use_variant=true",
                                        "sparse.weight.sparsity_type='2:4'"])


def test_magnitude_needs_no_calibration_path(raw):
    raw["calib"]["path"] = None
    with pytest.raises(ConfigError, match="calib.path is not set"):
        load_config(raw=raw)
    assert load_config(raw=raw, overrides=["sparse.method=Magnitude"]).sparse.method == "Magnitude"


def test_eval_paths_follow_llmc_layout(raw, tmp_path):
    for name in ("wikitext2", "c4"):
        (tmp_path / "evals" / name).mkdir(parents=True)
    cfg = load_config(raw=raw, overrides=["eval.name=[wikitext2, c4, builtin]",
                                          f"eval.path={tmp_path / 'evals'}"])
    assert cfg.eval.path_for("c4") == str(tmp_path / "evals" / "c4")
    (tmp_path / "evals" / "ptb.txt").write_text("a sentence\n")
    with_file = load_config(raw=raw, overrides=["eval.name=[wikitext2, ptb]",
                                                f"eval.path={tmp_path / 'evals'}"])
    assert with_file.eval.path_for("ptb") == str(tmp_path / "evals" / "ptb.txt")
    single = load_config(raw=raw, overrides=["eval.name=wikitext2",
                                             f"eval.path={tmp_path / 'evals' / 'wikitext2'}"])
    assert single.eval.path_for("wikitext2") == str(tmp_path / "evals" / "wikitext2")


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


@pytest.mark.parametrize("overrides,message", [
    (["sparse.blocksize=0"], "sparse.blocksize must be >= 1"),
    (["sparse.percdamp=-1"], "sparse.percdamp must be >= 0"),
    (["sparse.wbits=9"], "sparse.wbits must be 2..8 .* or 16"),
    (["sparse.weight.sparsity_type=2:3", "sparse.blocksize=128"],
     "blocksize 128 must be a multiple of M = 3"),
])
def test_sparsegpt_keys_are_checked(raw, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw=raw, overrides=["sparse.method=SparseGPT"] + overrides)


@pytest.mark.parametrize("overrides,message", [
    (["sparse.base=OWL"], "sparse.base 'OWL' must be one of Magnitude, RIA, SparseGPT, Wanda"),
    (["sparse.owl.granularity=block"], "granularity 'block' must be one of layer, linear"),
    (["sparse.owl.M=0"], "M must be > 0"),
    (["sparse.base=Magnitude", "sparse.wbits=4"],
     r"wbits is a setting of .*OWL \(over Magnitude\) does not use it"),
    (["sparse.base=SparseGPT", "sparse.blocksize=0"], "sparse.blocksize must be >= 1"),
])
def test_owl_keys_are_checked(raw, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(raw=raw, overrides=["sparse.method=OWL"] + overrides)


def test_owl_lambda_key_round_trips_and_owl_always_calibrates(raw):
    cfg = load_config(raw=raw, overrides=["sparse.method=OWL", "sparse.base=Magnitude",
                                          "sparse.owl.lambda=0.2"])
    assert cfg.sparse.settings["owl"].lambda_ == 0.2
    assert cfg.to_dict()["sparse"]["owl"] == {"M": 5.0, "lambda": 0.2, "granularity": "layer"}
    assert load_config(raw=cfg.to_dict()).sparse.settings["owl"].lambda_ == 0.2
    raw["calib"]["path"] = None  # OWL measures activations even over Magnitude
    with pytest.raises(ConfigError, match="calib.path is not set"):
        load_config(raw=raw, overrides=["sparse.method=OWL", "sparse.base=Magnitude"])
