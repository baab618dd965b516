"""Cached measurements: reused for the same key, never silently replaced for another."""
import json

import pytest
import torch

from llmc.errors import LlmcError
from llmc.runner.cache import cached_json, weights_fingerprint, windows_fingerprint


def test_same_key_is_reused_without_computing(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"traces": {"0.q": 1.5}}

    path = tmp_path / "sensitivity.json"
    assert cached_json(path, {"model": "a", "tol": 0.001}, compute, False) == (
        {"traces": {"0.q": 1.5}}, False)
    assert cached_json(path, {"model": "a", "tol": 0.001}, compute, False) == (
        {"traces": {"0.q": 1.5}}, True)
    assert len(calls) == 1


def test_another_key_is_refused_before_computing_and_the_file_kept(tmp_path):
    path = tmp_path / "sensitivity.json"
    cached_json(path, {"model": "a", "windows": "w"}, lambda: 1, False)
    text = path.read_text()

    def compute():
        raise AssertionError("must not compute")

    with pytest.raises(LlmcError, match="another model; set save.overwrite: True"):
        cached_json(path, {"model": "b", "windows": "w"}, compute, False)
    assert path.read_text() == text
    assert cached_json(path, {"model": "b", "windows": "w"}, lambda: 2, True) == (2, False)
    assert json.loads(path.read_text())["value"] == 2


def test_unreadable_file_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "sensitivity.json"
    path.write_text("{not json")
    with pytest.raises(LlmcError, match="unreadable"):
        cached_json(path, {"model": "a"}, lambda: 1, False)
    assert cached_json(path, {"model": "a"}, lambda: 1, True) == (1, False)


def test_fingerprints_change_with_any_weight_or_token():
    weights = {(0, "q"): torch.zeros(4, 4), (0, "k"): torch.ones(2, 4, dtype=torch.bfloat16)}
    same = {(0, "q"): torch.zeros(4, 4), (0, "k"): torch.ones(2, 4, dtype=torch.bfloat16)}
    assert weights_fingerprint(weights.items()) == weights_fingerprint(same.items())
    same[(0, "q")][3, 3] = 1e-30
    assert weights_fingerprint(weights.items()) != weights_fingerprint(same.items())
    renamed = {(0, "v"): weights[(0, "q")], (0, "k"): weights[(0, "k")]}
    assert weights_fingerprint(weights.items()) != weights_fingerprint(renamed.items())


def test_weights_fingerprint_is_the_one_sensitivity_json_files_were_keyed_by():
    """A cache written before the fingerprint was read block by block is still reused: the
    digest of names, then of each tensor's shape, dtype and bytes, as it was computed then."""
    import hashlib

    weights = {(0, "q"): torch.arange(6.).reshape(2, 3), (1, "k"): torch.ones(2, dtype=torch.half)}
    names = hashlib.blake2b(b"0.q\n1.k", digest_size=8).hexdigest()
    values = hashlib.blake2b(digest_size=16)
    for tensor in weights.values():
        values.update(f"{tuple(tensor.shape)} {tensor.dtype};".encode())
        values.update(tensor.view(torch.uint8).numpy().tobytes())
    assert weights_fingerprint(weights.items()) == f"{names}-{values.hexdigest()}"


def test_windows_fingerprint():
    windows = [torch.tensor([[1, 2, 3]])]
    assert windows_fingerprint(windows) == windows_fingerprint([torch.tensor([[1, 2, 3]])])
    assert windows_fingerprint(windows) != windows_fingerprint([torch.tensor([[1, 2, 4]])])
