"""base.offload_activations: disk (llmc/runner/activations.py): the activations live in one
memory-mapped file, each batch a view into it, and the weights are bit-identical to keeping
them in RAM (the same operations on the same values; only where they wait differs)."""
import copy

import pytest
import torch

from conftest import CPU, arch_adapter, tiny_model, token_batches
from llmc.errors import LlmcError
from llmc.models import ModelHandle
from llmc.registry import METHODS
from llmc.runner import prune_blockwise
from llmc.runner.activations import ActivationFile
from llmc.runner.blockwise import calibration_home
from llmc.runner.capture import capture_block_inputs
from llmc.sparse import Sparsifier, UniformPlan
from llmc.config import SparseCfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pruned(method, offload, sparsity_out, scratch, model):
    cfg = SparseCfg(method=method)
    cfg.weight.sparsity = 0.5
    handle = ModelHandle(copy.deepcopy(model), arch_adapter("llama"))
    prune_blockwise(handle, METHODS[method](cfg), UniformPlan(cfg.weight),
                    token_batches(3, 12, 1) + token_batches(1, 7, 2), CPU,
                    sparsity_out=sparsity_out, offload=offload, scratch=scratch)
    return handle.model.state_dict()


@pytest.mark.parametrize("method", ["Wanda", "SparseGPT"])
@pytest.mark.parametrize("sparsity_out", [False, True])
def test_disk_gives_the_weights_of_ram(tmp_path, method, sparsity_out):
    model = tiny_model("llama", num_hidden_layers=3)
    in_ram = pruned(method, True, sparsity_out, None, model)
    on_disk = pruned(method, "disk", sparsity_out, tmp_path / "acts", model)
    for name in in_ram:
        assert torch.equal(in_ram[name], on_disk[name]), name
    assert list((tmp_path / "acts").iterdir()) == []  # the file is gone afterwards


def test_batches_are_views_into_one_file(tmp_path):
    handle = ModelHandle(tiny_model("llama"), arch_adapter("llama"))
    batches = token_batches(2, 12, 1) + token_batches(1, 5, 3)
    with calibration_home(handle, batches, CPU, "disk", tmp_path) as home:
        inputs = capture_block_inputs(handle, batches, CPU, home)
        file = home.path
        assert file.stat().st_size == sum(h.numel() * h.element_size() for h in inputs.hidden)
        on_disk = torch.from_file(str(file), shared=False, size=file.stat().st_size // 4,
                                  dtype=torch.float32)
        assert torch.equal(on_disk[:inputs.hidden[0].numel()], inputs.hidden[0].reshape(-1))
        inputs.replace(2, torch.full_like(inputs.hidden[2], 7.0))  # written through the map
        tail = torch.from_file(str(file), shared=False, size=file.stat().st_size // 4,
                               dtype=torch.float32)[-inputs.hidden[2].numel():]
        assert bool((tail == 7.0).all())
    assert not file.exists()


def test_an_error_in_the_loop_leaves_no_file(tmp_path):
    class Failing(Sparsifier):
        needs = ("input_norms",)

        def prune_group(self, linears, stats, targets):
            raise LlmcError("boom")

    handle = ModelHandle(tiny_model("llama"), arch_adapter("llama"))
    cfg = SparseCfg(method="Wanda")
    with pytest.raises(LlmcError, match="boom"):
        prune_blockwise(handle, Failing(cfg), UniformPlan(cfg.weight), token_batches(2, 8, 1), CPU,
                        offload="disk", scratch=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_batch_of_another_shape_is_refused(tmp_path):
    home = ActivationFile(tmp_path, [(1, 4, 8)], torch.float32)
    with pytest.raises(RuntimeError, match="laid out for"):
        home.hold(0, torch.zeros(1, 5, 8))
    home.close()


def test_a_run_with_disk_offload_equals_one_in_ram(cli, run_config, tmp_path):
    from safetensors.torch import load_file

    for name, offload in (("ram", "true"), ("disk", "disk")):
        code, stderr = cli("--config", run_config, "--set", "eval.eval_pos=[]",
                           "--set", f"base.offload_activations={offload}",
                           "--set", f"save.save_path={tmp_path / name}")
        assert code == 0, stderr
    assert "activations on disk:" in stderr and "activations.bin" in stderr
    weights = [{k: v for f in sorted((tmp_path / name / "transformed_model").glob("*.safetensors"))
                for k, v in load_file(f).items()} for name in ("ram", "disk")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not (tmp_path / "disk" / ".llmc" / "scratch").exists()


def test_the_file_has_its_space_before_it_is_mapped(tmp_path):
    """Allocated, not sparse: a mapped page the disk has no room for would kill the process
    with SIGBUS when written back, saying nothing."""
    held = ActivationFile(tmp_path, [(4, 1024, 64)], torch.float32)
    try:
        assert held.path.stat().st_blocks * 512 >= 4 * 1024 * 64 * 4
    finally:
        held.close()


@pytest.mark.parametrize("fallocate_error", ["ENOSPC", "EOPNOTSUPP"])
def test_a_full_disk_is_an_os_error_naming_the_file(tmp_path, monkeypatch, fallocate_error):
    """ENOSPC from the allocation, or (a filesystem that cannot allocate ahead) less free space
    than the file needs: an OSError naming the file, which the run reports as its disk-full
    line; nothing is mapped."""
    import errno
    import os

    def fallocate(fd, offset, length):
        code = getattr(errno, fallocate_error)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    real_statvfs = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda path: type(
        "Full", (), {"f_bavail": 1, "f_frsize": real_statvfs(path).f_frsize})())
    with pytest.raises(OSError) as raised:
        ActivationFile(tmp_path, [(4, 1024, 64)], torch.float32)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "activations.bin")


def test_a_full_disk_under_offload_is_the_one_disk_full_line(cli, run_config, monkeypatch):
    import errno
    import os

    from conftest import error_line

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    code, stderr = cli("--config", run_config, "--set", "base.offload_activations=disk",
                       "--set", "eval.eval_pos=[]")
    line = error_line(stderr)
    assert code == 2 and "No space left on device" in line and "activations.bin" in line, line
    assert "free space or choose another save.save_path" in line
