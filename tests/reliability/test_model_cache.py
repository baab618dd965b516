"""The built-in model's cache (a manifest verified on every use, a damaged entry rebuilt),
LLMC_CACHE pointing where nothing can be written (one error naming it), and the input model's
fingerprint. The conversion from the wheel's GGUF is replaced by a tiny Llama: the real one
(540 MB) is tests/test_builtin_smoke.py's."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import error_line, tiny_model
from llmc.models.builtin import BuiltinModel, resolve_model_path
from llmc.models.fingerprint import model_fingerprint

FAST = ("--set", "eval.eval_pos=[]", "--set", "calib.n_samples=2")
BUILTIN = ("--set", "model.path=builtin:smollm2-135m")


def nothing_written(run_config):
    save = Path(yaml.safe_load(run_config.read_text())["save"]["save_path"])
    return not (save / "results.json").exists() and not (save / "transformed_model").exists()


def cut(file: Path, keep):
    data = file.read_bytes()
    file.write_bytes(data[:keep(len(data))])


@pytest.fixture
def fake_builtin(tmp_path, tiny_tokenizer, monkeypatch):
    """LLMC_CACHE in tmp_path, and the built-in model's conversion replaced by a tiny Llama;
    returns the list of conversions made."""
    monkeypatch.setenv("LLMC_CACHE", str(tmp_path / "cache"))
    conversions = []

    def convert(self, name, target):
        conversions.append(name)
        return tiny_model("llama"), tiny_tokenizer

    monkeypatch.setattr(BuiltinModel, "convert", convert)
    return conversions


def rewrite(file: Path, data: bytes):
    """Replace `file` by a new one (a new inode, as a re-download would make)."""
    tmp = file.with_name(file.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, file)


def flip_a_byte(file: Path):
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    rewrite(file, bytes(data))


@pytest.mark.parametrize("damage,why", [
    (None, None),
    (lambda d: (d / ".complete").unlink(), "incomplete (.complete is missing)"),
    (lambda d: cut(d / "model.safetensors", lambda n: n - 1), "model.safetensors is"),
    (lambda d: flip_a_byte(d / "model.safetensors"), "does not have the sha256"),
    (lambda d: (d / "config.json").unlink(), "incomplete (config.json is missing)"),
    (lambda d: [shutil.rmtree(d), d.write_text("a file")], "unreadable"),
], ids=["intact", "no_manifest", "truncated", "altered", "file_missing", "entry_a_file"])
def test_builtin_cache_is_verified_on_every_use(damage, why, fake_builtin):
    from loguru import logger

    entry = Path(resolve_model_path("builtin:smollm2-135m"))
    assert fake_builtin == ["smollm2-135m"] and (entry / ".complete").exists()
    manifest = json.loads((entry / ".complete").read_text())["files"]
    assert manifest["model.safetensors"]["sha256"] == hashlib.sha256(
        (entry / "model.safetensors").read_bytes()).hexdigest()
    if damage is not None:
        damage(entry)
    warnings = []
    sink = logger.add(warnings.append, level="WARNING")
    try:
        assert Path(resolve_model_path("builtin:smollm2-135m")) == entry
    finally:
        logger.remove(sink)
    if damage is None:
        assert fake_builtin == ["smollm2-135m"] and not warnings  # intact: used as it is
    else:
        assert fake_builtin == ["smollm2-135m"] * 2  # rebuilt, with a warning saying why
        assert len(warnings) == 1 and why in warnings[0] and "converting it again" in warnings[0]
        assert json.loads((entry / ".complete").read_text())["files"].keys() == manifest.keys()


def test_llmc_cache_a_file(run_config, tmp_path, cli, monkeypatch):
    (tmp_path / "cache-file").write_text("not a directory")
    monkeypatch.setenv("LLMC_CACHE", str(tmp_path / "cache-file"))
    code, stderr = cli("--config", run_config, *BUILTIN, *FAST)
    line = error_line(stderr)
    assert code == 2
    assert f"LLMC_CACHE '{tmp_path / 'cache-file'}' is a file, not a directory" in line
    assert (tmp_path / "cache-file").read_text() == "not a directory"
    assert nothing_written(run_config)


def test_llmc_cache_below_a_file(run_config, tmp_path, cli, monkeypatch):
    (tmp_path / "cache-file").write_text("x")
    monkeypatch.setenv("LLMC_CACHE", str(tmp_path / "cache-file" / "llmc"))
    code, stderr = cli("--config", run_config, *BUILTIN, *FAST)
    assert code == 2 and "cannot be created" in error_line(stderr)
    assert "LLMC_CACHE" in error_line(stderr) and nothing_written(run_config)


def test_llmc_cache_entry_not_writable(run_config, fake_builtin, cli):
    # (the suite may run as root, whom no chmod stops: a file where the entry's folder must go)
    cache = Path(os.environ["LLMC_CACHE"])
    cache.mkdir()
    (cache / "models").write_text("in the way")
    code, stderr = cli("--config", run_config, *BUILTIN, *FAST)
    line = error_line(stderr)
    assert code == 2 and fake_builtin == ["smollm2-135m"]
    assert "could not write" in line and f"LLMC_CACHE '{cache}'" in line
    assert (cache / "models").read_text() == "in the way" and nothing_written(run_config)


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_hashes_every_weight_file(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    tiny_model("llama").save_pretrained(single)
    tiny_model("llama").save_pretrained(sharded, max_shard_size="20KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    one = model_fingerprint(single)
    assert one["files"] == {"model.safetensors": hashlib.sha256(
        (single / "model.safetensors").read_bytes()).hexdigest()}
    many = model_fingerprint(sharded)
    assert set(many["files"]) == {"model.safetensors.index.json"} | {s.name for s in shards}
    assert model_fingerprint(single) == one  # the same files, the same fingerprint
    flip_a_byte(single / "model.safetensors")
    changed = model_fingerprint(single)
    assert changed["sha256"] != one["sha256"]
    assert changed["files"]["model.safetensors"] != one["files"]["model.safetensors"]
