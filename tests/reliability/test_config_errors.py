"""Bad configs and command lines, as a new user writes them: each is one `llmc: error:` line
naming the key, file or option and the fix, exit 2, and no run started (nothing under
save_path). Failures of the machine (out of memory, a full disk) are one line too, exit 2 (the
user can act on them as on bad input); a bug is one line, exit 1."""
import errno
import os
import re
import tempfile

import pytest
import torch
import yaml

from conftest import error_line
from llmc.config import load_config


def _no_run_started(run_config):
    save = yaml.safe_load(run_config.read_text())["save"]["save_path"]
    assert not os.path.exists(save), os.listdir(save)


# ---------------------------------------------------------------- --set


@pytest.mark.parametrize("override,message", [
    ("sparse.weight.sparsity=[0.5", "--set 'sparse.weight.sparsity=[0.5' is not valid YAML, "
                                    "column 5 of the value: expected ',' or ']'"),
    ("base.seed='1", "--set 'base.seed='1' is not valid YAML, column 3 of the value"),
    ("base.seed=*seed", "found undefined alias 'seed'"),
    ("sparse.weight.sparsity=!!python/object:os.system ls",
     "the tag '!!python/object:os.system' is not allowed"),
    ("sparse.weight.sparsity=!!python/name:os.system", "the tag '!!python/name:os.system' is not"),
    ("sparse.method=!custom Wanda", "the tag '!custom' is not allowed"),
    ("base={seed: 1, seed: 2}", "key 'seed' is given twice in one mapping, on line 1 and line 1"),
    ("base.seed=1\x00", r"--set 'base.seed=1\x00', line 1: character U+0000 is not allowed"),
    ("sparse.weight.sparsity", "--set 'sparse.weight.sparsity' must look like section.key=value"),
    ("=0.5", "--set '=0.5': empty key in ''"),
    ("sparse..sparsity=0.5", "empty key in 'sparse..sparsity'"),
    ("base.seed.value=1", "'base.seed' is a value, not a section"),
    ("sparse.weight.sparsity.x=1", "'sparse.weight.sparsity' is a value, not a section"),
])
def test_bad_set_syntax(cli, run_config, override, message):
    code, stderr = cli("--config", run_config, "--set", override)
    assert code == 2
    assert message in error_line(stderr)
    _no_run_started(run_config)


@pytest.mark.parametrize("override,section,example", [
    ("sparse=null", "sparse", "sparse.method"),
    ("sparse.weight=null", "sparse.weight", "sparse.weight.sparsity"),
    ("sparse.owl=", "sparse.owl", "sparse.owl.M"),  # an empty value is null too
    ("base=~", "base", "base.seed"),
    ("sparse={method: OWL, owl: null}", "sparse.owl", "sparse.owl.M"),
    ("sparse.mixgpt.sensitivity=null", "sparse.mixgpt.sensitivity",
     "sparse.mixgpt.sensitivity.n_samples"),
])
def test_set_section_to_null_is_refused(cli, run_config, override, section, example):
    code, stderr = cli("--config", run_config, "--set", override)
    assert code == 2
    line = error_line(stderr)
    assert f"{section} is a section; null would silently reset all of it" in line
    assert f"--set {example}=" in line
    _no_run_started(run_config)


def test_set_mapping_for_a_section_merges_into_the_file(run_config):
    run_config.write_text(run_config.read_text().replace("sparsity: 0.5", "sparsity: 0.7"))
    cfg = load_config(str(run_config), ["sparse={method: SparseGPT, blocksize: 64}"])
    assert cfg.sparse.method == "SparseGPT" and cfg.sparse.settings == {"blocksize": 64}
    assert cfg.sparse.weight.sparsity == 0.7  # kept from the file, not reset to the default
    empty_section = run_config.read_text().replace("sparse:", "sparse: null\nunused:")
    run_config.write_text(empty_section.replace("unused:", "_unused:"))
    raw = yaml.safe_load(run_config.read_text())
    del raw["_unused"]  # the file's sparse section left empty (null), then keys set inside it
    cfg = load_config(raw=raw, overrides=["sparse.weight.sparsity=0.6"])
    assert cfg.sparse.weight.sparsity == 0.6 and cfg.sparse.method == "Wanda"


# ---------------------------------------------------------------- the config file


@pytest.mark.parametrize("text,message", [
    (b"base:\n  seed: 1\nsparse: \xff\n", r"is not UTF-8 text: byte 0xff at offset 24 \(line 3\)"),
    (b"", r"holds no settings \(it is empty or only comments\)"),
    (b"# all commented out\n# base: {seed: 1}\n", "holds no settings"),
    (b"- base\n- model\n", "must be a mapping of sections .* at its top level, got a list"),
    (b"wanda\n", "at its top level, got the str 'wanda'"),
    (b"base:\n  seed: [1\nmodel: {}\n", r"is not valid YAML, line 3, column \d+: expected ','"),
    (b"base:\n\tseed: 1\n", r"is not valid YAML, line 2, column 1: found character '\\t'"),
    (b"base: !!python/object/apply:os.system [ls]\n",
     "line 1, column 7: the tag '!!python/object/apply:os.system' is not allowed"),
    (b"base: {seed: 1}\x07\n", "line 1: character U[+]0007 is not allowed"),
    (b"base:\n  seed: 1\nsparse:\n  weight:\n    sparsity: 0.5\n    sparsity: 0.6\n",
     "key 'sparsity' is given twice in one mapping, on line 5 and line 6"),
    (b"base: {seed: 1}\nmodel: {}\nbase: {seed: 2}\n",
     "key 'base' is given twice in one mapping, on line 1 and line 3"),
])
def test_bad_config_file(cli, tmp_path, monkeypatch, text, message):
    path = tmp_path / "bad.yml"
    path.write_bytes(text)
    monkeypatch.chdir(tmp_path)  # where a config without save.save_path would write ./save
    code, stderr = cli("--config", path)
    assert code == 2
    line = error_line(stderr)
    assert f"config file '{path}'" in line or f"config '{path}'" in line
    assert re.search(message, line), line
    assert os.listdir(tmp_path) == ["bad.yml"]


def test_config_path_that_is_missing_or_a_directory(cli, tmp_path):
    code, stderr = cli("--config", tmp_path / "nope.yml")
    assert code == 2 and f"config file '{tmp_path / 'nope.yml'}' does not exist" in \
        error_line(stderr)
    code, stderr = cli("--config", tmp_path)
    assert code == 2 and f"config file '{tmp_path}' is a directory; pass the YAML file" in \
        error_line(stderr)
    code, stderr = cli("--config", "")
    assert code == 2 and "no config given; pass --config FILE.yml" in error_line(stderr)


def test_unreadable_config_file(cli, run_config, monkeypatch):
    import llmc.config.yaml_text

    def refuse(path, mode="r", *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    # chmod 000 cannot stop root (who runs some CI), so the open is made to fail as it would
    monkeypatch.setattr(llmc.config.yaml_text, "open", refuse, raising=False)
    code, stderr = cli("--config", run_config)
    assert code == 2
    assert f"config file '{run_config}' cannot be read: permission denied" in error_line(stderr)
    _no_run_started(run_config)


def _merged_config(run_config, eval_lines):
    """run_config with calib and eval sharing keys through a merge key."""
    raw = yaml.safe_load(run_config.read_text())
    calib, evaluation = raw.pop("calib"), raw.pop("eval")
    text = yaml.safe_dump(raw) + (
        "calib:\n"
        "  <<: &data {name: wikitext2, seq_len: 32}\n"
        f"  path: {calib['path']}\n"
        "  n_samples: 6\n"
        "  preproc: wikitext2_gptq\n"
        "eval:\n"
        "  <<: *data\n"
        f"  path: {evaluation['path']}\n") + "".join(f"  {line}\n" for line in eval_lines)
    run_config.write_text(text)
    return text.splitlines()


def test_merge_keys_keep_their_override_meaning(run_config):
    load_config(str(run_config))  # valid as written
    _merged_config(run_config, ["seq_len: 48  # beside the merge: wins over the merged 32"])
    cfg = load_config(str(run_config))
    assert (cfg.eval.name, cfg.eval.seq_len, cfg.calib.seq_len) == ("wikitext2", 48, 32)


def test_a_key_repeated_beside_a_merge_is_refused(cli, run_config):
    lines = _merged_config(run_config, ["seq_len: 48", "seq_len: 64"])
    first, second = (n for n, text in enumerate(lines, 1) if text.startswith("  seq_len: "))
    code, stderr = cli("--config", run_config)
    assert code == 2
    assert error_line(stderr) == (
        f"llmc: error: config file '{run_config}': key 'seq_len' is given twice in one mapping, "
        f"on line {first} and line {second}; keep one (YAML would silently use the last)")
    _no_run_started(run_config)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("overrides,message", [
    (["base.seed=-1"], r"base.seed must be an integer in \[0, 2\^32\), got -1"),
    (["base.seed=4294967296"], r"base.seed must be an integer in \[0, 2\^32\), got 4294967296"),
    (["calib.seed=-7"], r"calib.seed must be an integer in \[0, 2\^32\), got -7"),
    (["sparse.method=MixGPT", "sparse.mixgpt.sensitivity.seed=4294967296"],
     r"sparse.mixgpt.sensitivity.seed must be an integer in \[0, 2\^32\)"),
    (["calib.n_samples=99999999999999999999999"],
     r"calib.n_samples 99999999999999999999999 is out of range \(64-bit integers only\)"),
    (["sparse.method=SparseGPT", "sparse.percdamp=.nan"],
     "sparse.percdamp must be a finite number, got nan"),
    (["sparse.method=OWL", "sparse.owl.M=.inf"], "sparse.owl.M must be a finite number, got inf"),
    (["sparse.method=SparseGPT", "sparse.percdamp=1e400"],
     "sparse.percdamp must be a finite number, got inf"),
    (["eval.seq_len=1e3"], "eval.seq_len must be an integer, got 1000.0"),
    (["sparse.method=SparseGPT", "sparse.use_variant=false"],
     "sparse.use_variant is a setting of Wanda; SparseGPT does not use it: remove it, or set "
     "sparse.method to Wanda"),
    (["sparse.blocksize=128"], "sparse.blocksize is a setting of MixGPT and SparseGPT; Wanda "
                               "does not use it"),
    (["sparse.owl.M=5"], "sparse.owl is a setting of OWL; Wanda does not use it"),
    (["sparse.method=OWL", "sparse.base=Magnitude", "sparse.wbits=16"],
     r"sparse.wbits is a setting of MixGPT and SparseGPT; OWL \(over Magnitude\) does not"),
    (["eval.eval_pos=[transformed]", "eval.name=[wikitext2, wikitext2]"],
     "eval.name lists 'wikitext2' more than once; list it once"),
    (["eval.path={wikitxt2: /data/wiki.jsonl}"],
     r"eval.path has an entry for 'wikitxt2', which is no dataset \(did you mean 'wikitext2'\?\)"),
])
def test_bad_values(cli, run_config, overrides, message):
    argv = ["--config", run_config]
    for override in overrides:
        argv += ["--set", override]
    code, stderr = cli(*argv)
    assert code == 2
    assert re.search(message, error_line(stderr)), stderr
    _no_run_started(run_config)


def test_exponents_read_as_numbers(run_config):
    cfg = load_config(str(run_config), ["sparse.method=SparseGPT", "sparse.percdamp=1e-2",
                                        "sparse.weight.sparsity=5E-1"])
    assert cfg.sparse.settings["percdamp"] == 0.01 and cfg.sparse.weight.sparsity == 0.5


def test_a_gpu_index_beyond_the_visible_ones(cli, run_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code, stderr = cli("--config", run_config, "--set", "base.device=cuda:2")
    assert code == 2
    assert "base.device is cuda:2 but only 2 CUDA GPU(s) are visible (cuda:0 to cuda:1)" in \
        error_line(stderr)
    _no_run_started(run_config)


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: --config"),
    (["--config"], "argument --config: expected one argument"),
    (["--config", "{cfg}", "--bogus"], "unrecognized arguments: --bogus"),
    (["--config", "{cfg}", "--config", "other.yml"], "argument --config: given twice"),
    (["--config", "{cfg}", "--set"], "argument --set: expected one argument"),
    (["--config", "{cfg}", "--log-level", "verbose"],
     "argument --log-level: invalid choice: 'VERBOSE' (choose from 'TRACE', 'DEBUG', 'INFO', "
     "'SUCCESS', 'WARNING', 'ERROR', 'CRITICAL')"),
])
def test_bad_command_line(cli, run_config, argv, message):
    code, stderr = cli(*[a.replace("{cfg}", str(run_config)) for a in argv])
    assert code == 2
    assert message in error_line(stderr)
    lines = stderr.splitlines()  # the usage line, then the one error line
    assert lines[-2].startswith("usage: llmc") and lines[-1].startswith("llmc: error:")
    _no_run_started(run_config)


def test_log_level_in_any_case(cli, run_config):
    code, stderr = cli("--config", run_config, "--log-level", "debug", "--set", "base.seed=-1")
    assert code == 2 and "base.seed must be" in error_line(stderr)  # parsed, then config checked


# ---------------------------------------------------------------- failures that are not the input


@pytest.fixture
def failing_run(monkeypatch, tmp_path):
    """Make the run (after the config is valid) raise `error`; tracebacks go to tmp_path."""
    import llmc.pipeline

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def fail_with(error):
        def run(cfg):
            raise error
        monkeypatch.setattr(llmc.pipeline, "run", run)
    return fail_with


@pytest.mark.parametrize("error,message", [
    (MemoryError(), "out of memory on the CPU (host memory): reduce calib.bs / eval.bs / seq_len "
                    "or use a bigger device"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a total "
                            "capacity of 79.15 GiB"), "out of memory on cuda:1: reduce calib.bs"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 9 bytes."), "out of memory on the CPU"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/save/results.json"),
     "no space left on device writing '/data/save/results.json': free some space"),
])
def test_environment_failures_are_one_line(cli, run_config, failing_run, tmp_path, error, message):
    failing_run(error)
    code, stderr = cli("--config", run_config)
    assert code == 2
    assert message in error_line(stderr)
    assert not list((tmp_path / "tmp").iterdir())  # no bug report for the machine's failure


def test_a_bug_is_one_line_with_the_traceback_in_a_file(cli, run_config, failing_run, tmp_path):
    failing_run(KeyError("block_3"))
    code, stderr = cli("--config", run_config)
    assert code == 1
    line = error_line(stderr)
    path = tmp_path / "tmp" / f"llmc-traceback-{os.getpid()}.txt"
    assert line == (f"llmc: error: unexpected KeyError: 'block_3' — this is a bug in llmc; the "
                    f"full traceback was written to {path}; please report it")
    report = path.read_text()
    assert "Traceback (most recent call last)" in report and "KeyError: 'block_3'" in report

    code, stderr = cli("--config", run_config, "--log-level", "DEBUG")
    assert code == 1 and "Traceback (most recent call last)" in stderr  # asked for: shown too
    assert sum(line.startswith("llmc: error:") for line in stderr.splitlines()) == 1


def test_the_traceback_file_is_never_written_through_a_planted_link(
        cli, run_config, failing_run, tmp_path):
    """The temp directory is shared: a link at the traceback's name is left alone."""
    failing_run(KeyError("block_3"))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = tmp_path / "tmp" / f"llmc-traceback-{os.getpid()}.txt"
    os.symlink(victim, planted)
    code, stderr = cli("--config", run_config)
    line = error_line(stderr)
    assert code == 1 and victim.read_text() == "keep me" and str(planted) not in line
    written = line.split("written to ")[1].split(";")[0]
    assert "KeyError: 'block_3'" in open(written).read()


def test_ctrl_c_still_exits_130(cli, run_config, failing_run):
    failing_run(KeyboardInterrupt())
    code, stderr = cli("--config", run_config)
    assert code == 130 and stderr.strip().endswith("llmc: interrupted (SIGINT)")


def test_a_thread_that_fails_is_one_warning_line(cli, run_config, monkeypatch, tmp_path):
    import threading

    import llmc.pipeline

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def run(cfg):  # as a background record whose reader hits a bug
        worker = threading.Thread(target=lambda: {}["sha256"], name="model-hash")
        worker.start()
        worker.join()
    monkeypatch.setattr(llmc.pipeline, "run", run)
    hook = threading.excepthook
    code, stderr = cli("--config", run_config)
    assert code == 0 and "Traceback" not in stderr
    path = tmp_path / f"llmc-traceback-{os.getpid()}.txt"
    assert (f"model-hash failed: KeyError: 'sha256' — a bug in llmc; the traceback was written "
            f"to {path}") in stderr
    assert "KeyError: 'sha256'" in path.read_text()
    assert threading.excepthook is hook  # main put back the hook it found



@pytest.mark.parametrize("assignment, expected", [
    ("calib.name=builtin", "calib.path is set to '{calib}' but calib.name 'builtin' reads no file"),
    ("calib.download=true", "calib.path is set to '{calib}' but calib.download: True reads the "
                            "hub copy instead"),
    ("eval.name=builtin", "eval.path is set to '{eval}' but eval.name 'builtin' reads no file"),
    ("eval.download=true", "eval.path is set to '{eval}' but eval.download: True reads the hub"),
])
def test_a_data_path_the_run_would_not_read_is_refused(cli, run_config, tmp_path, assignment,
                                                       expected):
    # The user believes the data comes from that file: running on other data would be a silent
    # wrong result.
    code, stderr = cli("--config", run_config, "--set", assignment)
    assert code == 2
    paths = {"calib": tmp_path / "calib.jsonl", "eval": tmp_path / "wikitext2.jsonl"}
    assert expected.format(**paths) in error_line(stderr)
    assert not (tmp_path / "save").exists()
