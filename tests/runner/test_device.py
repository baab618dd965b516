"""Where activations wait between blocks, and nested moves."""
import os
import subprocess
import sys

import pytest
import torch

from llmc.errors import LlmcError
from llmc.runner import device as device_module
from llmc.runner.device import activation_home, resolve_device, to_device


def test_activations_leave_the_gpu_only_when_they_would_not_fit(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(device_module.torch.cuda, "mem_get_info", lambda d: (10 * 2**30, 80 * 2**30))
    assert activation_home("auto", cuda, 4 * 2**30) == cuda
    assert activation_home("auto", cuda, 6 * 2**30) == torch.device("cpu")  # > half of free
    assert activation_home(True, cuda, 1) == torch.device("cpu")
    assert activation_home(False, cuda, 100 * 2**30) == cuda
    assert activation_home("auto", torch.device("cpu"), 1) == torch.device("cpu")


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(LlmcError, match="no CUDA GPU is visible"):
        resolve_device("cuda:0")
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device_module.torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(LlmcError, match="cuda:3 but only 2 CUDA GPU.*cuda:0 to cuda:1"):
        resolve_device("cuda:3")


def test_under_torchrun_each_rank_takes_its_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")  # gloo on the CPU
    monkeypatch.setattr(device_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device_module.torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda:1")
    with pytest.raises(LlmcError, match="every torchrun rank of this machine on one GPU"):
        resolve_device("cuda:0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one rank per machine may name its GPU
    assert resolve_device("cuda:0") == torch.device("cuda:0")


PEAK_PROBE = """
import mmap
from llmc.runner.device import peak_rss_since_reset, reset_peak_rss
block = mmap.mmap(-1, 64 * 2**20)  # 64 MiB touched, then handed back to the OS
block.write(b"x" * len(block))
block.close()
before = peak_rss_since_reset()
reset_peak_rss()
after = peak_rss_since_reset()
print(before, after)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux only")
def test_the_peak_rss_can_be_counted_from_a_point_on():
    # In a fresh process: in this one, freed memory may stay resident and hide the block.
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True,
                          check=True)
    before, after = map(int, done.stdout.split())
    assert after <= before - 48 * 2**20


def test_to_device_walks_nested_values():
    value = {"a": (torch.ones(1), [torch.zeros(1), 3]), "b": None}
    moved = to_device(value, torch.device("cpu"))
    assert moved["a"][1][1] == 3 and moved["b"] is None and torch.equal(moved["a"][0], torch.ones(1))
