"""A resume proves its state (llmc/runner/resume.py): a finished block's shard or an activations
file deleted or changed by one float between the kill and the rerun, or the checkpoint's
content changed with its names, sizes and times kept, never ends in weights that differ from an
uninterrupted run's. Each case would resume and save other weights with the verification off:
the assertions of equality with the uninterrupted run are the mutation check."""
import json
import os
from pathlib import Path

import pytest

from conftest import error_line
from saved_run import FAST, assert_clean
from test_resume_after_kill import assert_same_run, forkserver_started, kill_at  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread", "forkserver_started")
SPARSEGPT = ("--set", "sparse.method=SparseGPT", "--set", "sparse.blocksize=16")


@pytest.fixture
def killed(run_config, tiny_model_dir, tmp_path, cli):
    """(argv, reference save path, save path, model dir): an uninterrupted streamed run as the
    reference, and the same run killed once block 1 was checkpointed."""
    model = tiny_model_dir("llama", num_hidden_layers=4)
    argv = ["--config", run_config, "--set", f"model.path={model}", "--set", "model.load=stream",
            *FAST, *SPARSEGPT]
    reference = tmp_path / "reference"
    code, stderr = cli(*argv, "--set", f"save.save_path={reference}")
    assert code == 0, stderr
    save = tmp_path / "save"
    argv += ["--set", f"save.save_path={save}"]
    kill_at(tmp_path, argv, "block:checkpointed@1")
    return argv, reference, save, model


def flip_last_float(path) -> None:
    """Change the file's last 4 bytes (a float of its last tensor), keeping its size and times."""
    stat = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0x15 for b in data[-4:])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size


def resume_dir(save):
    return save / ".llmc/scratch/resume"


def edit_state(save, **changes) -> None:
    path = resume_dir(save) / "state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("damage", ["shard changed", "shard deleted", "activations changed",
                                    "state edited"])
def test_a_damaged_resume_state_starts_over_to_the_uninterrupted_weights(cli, killed, damage):
    argv, reference, save, _ = killed
    shard = save / ".llmc/scratch/shards/model-00002-of-00006.safetensors"  # block 0
    assert shard.is_file()
    if damage == "shard changed":
        flip_last_float(shard)
    elif damage == "shard deleted":
        shard.unlink()
    elif damage == "activations changed":
        flip_last_float(next(resume_dir(save).glob("activations-*.safetensors")))
    else:  # a plan with other targets would give other weights, silently
        state = json.loads((resume_dir(save) / "state.json").read_text())
        edit_state(save, plan={**state["plan"], "sparsity": 0.3})
    code, stderr = cli(*argv)
    assert code == 0, stderr
    assert "resuming" not in stderr and "starting over" in stderr
    if damage.endswith("changed"):
        assert "changed since the interrupted run wrote it" in stderr
    if damage == "state edited":
        assert "its content is not what was written" in stderr
    assert "resumed_at_block" not in assert_same_run(reference, save)
    assert_clean(save)


def test_an_intact_state_still_resumes(cli, killed):
    argv, reference, save, _ = killed
    state = json.loads((resume_dir(save) / "state.json").read_text())
    assert sorted(state["shards"]) == ["model-00002-of-00006.safetensors",
                                       "model-00003-of-00006.safetensors"]
    assert len(state["activations_sha256"]) == 1 and state["model_sha256"]
    code, stderr = cli(*argv)
    assert code == 0 and "resuming at block 2 of 4" in stderr, stderr
    assert assert_same_run(reference, save)["resumed_at_block"] == 2


def test_a_state_without_the_checkpoints_hash_starts_over(cli, killed):
    """Killed before the background hash of the checkpoint was done: the weights its blocks
    came from cannot be verified."""
    argv, reference, save, _ = killed
    path = resume_dir(save) / "state.json"
    state = json.loads(path.read_text())
    state.pop("state_sha256")
    state["model_sha256"] = None  # as a state written before the hash was known holds it
    from llmc.runner.resume import _digest
    path.write_text(json.dumps({**state, "state_sha256": _digest(state)}))
    code, stderr = cli(*argv)
    assert code == 0 and "resuming" not in stderr and "cannot be verified" in stderr, stderr
    assert "resumed_at_block" not in assert_same_run(reference, save)


def test_a_checkpoint_changed_with_its_size_and_mtime_kept_is_not_mixed_in(cli, killed):
    argv, _, save, model = killed
    flip_last_float(Path(model) / "model.safetensors")  # cp -p of other weights, say
    code, stderr = cli(*argv)
    assert code == 2, stderr
    assert "changed since the interrupted run" in error_line(stderr)
    assert not os.path.lexists(save / "results.json")  # nothing committed
    assert not (resume_dir(save) / "state.json").exists()  # discarded: the next run starts over
    code, stderr = cli(*argv)
    assert code == 0 and "resuming" not in stderr, stderr
    assert_clean(save)


@pytest.mark.parametrize("damage", ["changed", "deleted"])
def test_a_damaged_sliced_block_starts_a_structured_run_over(cli, run_config, tiny_model_dir,
                                                              tmp_path, damage):
    """A Width run's sliced block not yet finished (block 3: read from its own shard on a
    resume) changed or deleted after the kill: the rerun starts over, with the uninterrupted
    weights."""
    model = tiny_model_dir("llama", num_hidden_layers=4)
    argv = ["--config", run_config, "--set", f"model.path={model}", "--set", "model.load=stream",
            *FAST, *SPARSEGPT, "--set", "sparse.structure=Width",
            "--set", "sparse.width.heads=1", "--set", "sparse.width.channels=16"]
    reference = tmp_path / "reference"
    assert cli(*argv, "--set", f"save.save_path={reference}")[0] == 0
    save = tmp_path / "save"
    argv += ["--set", f"save.save_path={save}"]
    kill_at(tmp_path, argv, "block:checkpointed@1")
    sliced = save / ".llmc/scratch/shards/sliced-00003.safetensors"
    if damage == "changed":
        flip_last_float(sliced)
    else:
        sliced.unlink()
    code, stderr = cli(*argv)
    assert code == 0, stderr
    assert "resuming" not in stderr and "starting over" in stderr
    assert "resumed_at_block" not in assert_same_run(reference, save)
    assert_clean(save)
