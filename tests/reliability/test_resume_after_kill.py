"""Resume after a crash (llmc/runner/resume.py, docs/outputs.md): a streamed run SIGKILLed at
any block, or during its save, then rerun with the same command, ends with the weights and
results of an uninterrupted run, bit for bit (the same operations in the same order on the same
bytes, one machine); a changed config is refused, or starts over with save.overwrite."""
import json
import os

import pytest
import torch

import llmc_child
from conftest import error_line
from saved_run import FAST, OVERWRITE, OWL, assert_clean, committed, saved_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread", "forkserver_started")


@pytest.fixture(scope="module")
def forkserver_started():
    llmc_child.forkserver()

FOUR_BLOCKS = 4
SPARSEGPT_OUT = ("--set", "sparse.method=SparseGPT", "--set", "sparse.sparsity_out=true",
                 "--set", "sparse.blocksize=16")
PRETRAIN = ("--set", "eval.eval_pos=[pretrain]")


@pytest.fixture
def four_block_config(run_config, tiny_model_dir):
    """run_config on a tiny Llama of four blocks, so a kill can land before, between and after
    checkpoints."""
    return run_config, ("--set", f"model.path={tiny_model_dir('llama', num_hidden_layers=4)}",
                        "--set", "model.load=stream")  # auto would hold so small a model


def kill_at(tmp_path, argv, point):
    marker = tmp_path / f"paused-{point.replace(':', '_').replace('@', '_')}"
    env = {"LLMC_PAUSE_AT": point, "LLMC_PAUSE_MARKER": str(marker)}
    process = llmc_child.start(argv, env, tmp_path / f"child-{os.getpid()}.err")
    llmc_child.wait_for(marker, process)
    process.kill()
    process.join()


def assert_same_run(reference, resumed):
    weights = saved_weights(reference), saved_weights(resumed)
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    first, second = committed(reference), committed(resumed)
    for key in ("ppl", "sparsity", "plan", "method"):
        assert first.get(key) == second.get(key), key
    return second


# (where the first run is killed, the block the rerun resumes at; None: it starts over)
KILLS = [("block:written@0", None), ("block:checkpointed@0", 1), ("block:written@2", 2),
         ("block:checkpointed@3", 4), ("save:model-written", 4)]


@pytest.mark.parametrize("method", [SPARSEGPT_OUT, OWL], ids=["sparsegpt-out", "owl"])
@pytest.mark.parametrize("point,resumed_at", KILLS)
def test_a_killed_run_resumes_to_the_uninterrupted_weights(
        cli, four_block_config, tmp_path, point, resumed_at, method):
    config, model = four_block_config
    stderr, results, _, save = killed_and_rerun(
        cli, tmp_path, ["--config", config, *model, *PRETRAIN, *method], point)
    assert_resumed(stderr, results, resumed_at, FOUR_BLOCKS)
    if resumed_at is not None:
        assert results["ppl"]["pretrain"]  # carried over from the killed run's eval
    assert_clean(save)
    assert not (save / ".llmc" / "scratch").exists()


def killed_and_rerun(cli, tmp_path, argv, point):
    """`argv` run uninterrupted (the reference), then into another save path killed at
    `point` and run again: (the rerun's stderr, its results, asserted to be the reference's
    weights and results, the reference's save path, the rerun's)."""
    reference, save = tmp_path / "reference", tmp_path / "save"
    code, stderr = cli(*argv, "--set", f"save.save_path={reference}")
    assert code == 0, stderr
    kill_at(tmp_path, [*argv, "--set", f"save.save_path={save}"], point)
    code, stderr = cli(*argv, "--set", f"save.save_path={save}")
    assert code == 0, stderr
    return stderr, assert_same_run(reference, save), reference, save


def assert_resumed(stderr, results, resumed_at, blocks):
    """The rerun resumed at block `resumed_at` of `blocks` (None: it started over)."""
    if resumed_at is None:
        assert "resuming" not in stderr and "resumed_at_block" not in results
    else:
        assert f"resuming at block {resumed_at} of {blocks}" in stderr
        assert results["resumed_at_block"] == resumed_at


def test_kills_at_every_block_in_turn_still_end_bit_identical(cli, four_block_config, tmp_path):
    """Killed after each checkpoint in turn, every rerun goes one block further."""
    config, model = four_block_config
    argv = ["--config", config, *model, *FAST, "--set", "sparse.method=SparseGPT"]
    reference = tmp_path / "reference"
    assert cli(*argv, "--set", f"save.save_path={reference}")[0] == 0
    save = ("--set", f"save.save_path={tmp_path / 'save'}")
    for block in range(FOUR_BLOCKS):
        kill_at(tmp_path, [*argv, *save], f"block:checkpointed@{block}")
        state = json.loads((tmp_path / "save/.llmc/scratch/resume/state.json").read_text())
        assert state["next_block"] == block + 1
    code, stderr = cli(*argv, *save)
    assert code == 0 and f"resuming at block {FOUR_BLOCKS} of {FOUR_BLOCKS}" in stderr
    assert_same_run(reference, tmp_path / "save")


@pytest.mark.parametrize("change,key", [
    (("--set", "sparse.weight.sparsity=0.6"), "sparse.weight.sparsity"),
    (("--set", "calib.n_samples=5"), "calib.n_samples"),
    (("--set", "base.seed=7"), "seed"),
])
def test_a_changed_config_is_refused_then_overwrite_starts_over(
        cli, four_block_config, tmp_path, change, key):
    config, model = four_block_config
    argv = ["--config", config, *model, *FAST, "--set", f"save.save_path={tmp_path / 'save'}"]
    kill_at(tmp_path, argv, "block:checkpointed@1")
    code, stderr = cli(*argv, *change)
    assert code == 2
    line = error_line(stderr)
    assert "resume state of an interrupted run" in line and key in line
    assert "save.overwrite: True" in line
    assert (tmp_path / "save/.llmc/scratch/resume/state.json").exists()  # kept for a rerun
    code, stderr = cli(*argv, *change, *OVERWRITE)
    assert code == 0 and "discarding the resume state" in stderr and "resuming" not in stderr
    assert_clean(tmp_path / "save")


def test_eval_and_save_settings_do_not_block_a_resume(cli, four_block_config, tmp_path):
    config, model = four_block_config
    argv = ["--config", config, *model, *FAST, "--set", f"save.save_path={tmp_path / 'save'}"]
    kill_at(tmp_path, argv, "block:checkpointed@1")
    code, stderr = cli(*argv, "--set", "eval.eval_pos=[transformed]",
                       "--set", "eval.inference_per_block=true")
    assert code == 0 and "resuming at block 2 of 4" in stderr, stderr
    assert committed(tmp_path / "save")["ppl"]["transformed"]


def test_an_unreadable_resume_state_starts_over(cli, four_block_config, tmp_path):
    config, model = four_block_config
    argv = ["--config", config, *model, *FAST, "--set", f"save.save_path={tmp_path / 'save'}"]
    kill_at(tmp_path, argv, "block:checkpointed@1")
    resume = tmp_path / "save/.llmc/scratch/resume"
    activations = next(resume.glob("activations-*"))
    activations.write_bytes(activations.read_bytes()[:100])  # truncated
    code, stderr = cli(*argv)
    assert code == 0 and "incomplete" in stderr and "starting over" in stderr
    assert_clean(tmp_path / "save")


def test_a_run_held_in_memory_leaves_an_interrupted_streamed_runs_state(
        cli, four_block_config, tmp_path):
    """It is not that run's to remove: the streamed run resumes afterwards."""
    config, model = four_block_config
    argv = ["--config", config, *model, *FAST, "--set", f"save.save_path={tmp_path / 'save'}"]
    kill_at(tmp_path, argv, "block:checkpointed@1")
    code, stderr = cli(*argv, "--set", "model.load=memory")
    assert code == 0, stderr
    assert (tmp_path / "save/.llmc/scratch/resume/state.json").exists()
    code, stderr = cli(*argv, *OVERWRITE)
    assert code == 0 and "resuming at block 2 of 4" in stderr
    assert not (tmp_path / "save/.llmc/scratch").exists()


# A structured pass first (the smaller model then pruned block by block): killed during the
# pass it starts over; killed after a block of the smaller model, the rerun makes the skeleton
# as small again from the interrupted run's record, reads the sliced blocks it had not
# finished from their shards, and ends with the uninterrupted weights.
STRUCTURED = {
    "shortgpt": ("--set", "sparse.structure=ShortGPT", "--set", "sparse.depth.remove=2"),
    "width": ("--set", "sparse.structure=Width", "--set", "sparse.width.heads=1",
              "--set", "sparse.width.channels=16", "--set", "sparse.method=SparseGPT"),
    # saved packed: the resumed run's grids come from the sliced blocks' shards
    "width-packed": ("--set", "sparse.structure=Width", "--set", "sparse.width.heads=1",
                     "--set", "sparse.width.channels=16", "--set", "sparse.method=SparseGPT",
                     "--set", "sparse.wbits=4", "--set", "save.format=compressed-tensors"),
}


@pytest.mark.parametrize("structure,point,resumed_at", [
    ("shortgpt", "block:checkpointed@0", (1, 2)),
    ("width", "structure:sliced@2", None),
    ("width", "block:checkpointed@1", (2, 4)),
    ("width", "block:written@2", (2, 4)),
    ("width-packed", "block:checkpointed@2", (3, 4))])
def test_a_killed_structured_run_resumes_to_the_uninterrupted_weights(
        cli, four_block_config, tmp_path, structure, point, resumed_at):
    config, model = four_block_config
    stderr, results, reference, save = killed_and_rerun(
        cli, tmp_path, ["--config", config, *model, *PRETRAIN, *STRUCTURED[structure]], point)
    assert results["structure"] == committed(reference)["structure"]
    assert_resumed(stderr, results, *(resumed_at or (None, None)))
    assert_clean(save)
    assert not (save / ".llmc" / "scratch").exists()


def test_a_killed_reallocation_run_resumes_with_the_finished_blocks_column_orders(
        cli, four_block_config, tmp_path):
    """RIA's reallocation records each Linear's column order: a streamed run writes a finished
    block's orders beside its shard, and a rerun after a kill reads them back, so
    column_orders.safetensors is the uninterrupted run's, bit for bit."""
    from safetensors.torch import load_file

    config, model = four_block_config
    argv = ["--config", config, *model, *PRETRAIN, "--set", "sparse.method=RIA",
            "--set", "sparse.ria.reallocation=true", "--set", "sparse.weight.sparsity_type=2:4"]
    stderr, results, reference, save = killed_and_rerun(cli, tmp_path, argv,
                                                        "block:checkpointed@1")
    assert_resumed(stderr, results, 2, FOUR_BLOCKS)
    assert results["column_orders"]["linears"] == 7 * FOUR_BLOCKS
    orders = [load_file(path / "column_orders.safetensors") for path in (reference, save)]
    assert orders[0].keys() == orders[1].keys()
    assert all(torch.equal(orders[0][k], orders[1][k]) for k in orders[0])
    assert_clean(save)


@pytest.mark.parametrize("arch,layout", [("qwen3_moe", "published"), ("mixtral", "fused")])
def test_a_killed_moe_run_resumes_to_the_uninterrupted_weights(
        cli, run_config, tiny_model_dir, tmp_path, arch, layout):
    """A streamed MoE run writes each finished block in the checkpoint's layout (experts fused
    or one tensor per expert) and a rerun reads its experts back from there."""
    from streamed_runs import as_fused

    directory = tiny_model_dir(arch, num_hidden_layers=4)
    if layout == "fused":
        as_fused(directory)
    argv = ["--config", run_config, "--set", f"model.path={directory}", "--set",
            "model.load=stream", "--set", "model.type=auto", *PRETRAIN, *SPARSEGPT_OUT]
    reference, save = tmp_path / "reference", tmp_path / "save"
    assert cli(*argv, "--set", f"save.save_path={reference}")[0] == 0
    kill_at(tmp_path, [*argv, "--set", f"save.save_path={save}"], "block:checkpointed@1")
    code, stderr = cli(*argv, "--set", f"save.save_path={save}")
    assert code == 0, stderr
    results = [json.loads((path / "results.json").read_text()) for path in (reference, save)]
    assert_resumed(stderr, results[1], 2, FOUR_BLOCKS)
    assert results[1]["engine"]["load"] == "stream"
    for key in ("ppl", "sparsity"):
        assert results[0][key] == results[1][key], key
    weights = saved_weights(reference), saved_weights(save)
    assert weights[0].keys() == weights[1].keys()
    assert any("gate_up_proj" in name for name in weights[0]) == (layout == "fused")
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    assert_clean(save)
