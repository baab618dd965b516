"""Data-parallel runs (llmc/distributed.py) under torchrun: 2 gloo processes on the CPU, one
thread each, against the same config run in this process.

The ranks sum their statistics in another order than one process accumulates them, so the
contract is the issue's: Magnitude identical; Wanda/OWL masks equal but for near-ties (two
scores within float rounding); OWL's plan equal to 1e-6; SparseGPT masks >= 99.9% equal and
kept weights within 1e-4 relative Frobenius norm per Linear; perplexities within 1e-6."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from conftest import arch_model, error_line, random_text, save_model_dir
from plain_pruning import plain_input_norms
from streamed_runs import as_fused

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUNS = Path(__file__).parent / "torchrun_runs.py"
N_SAMPLES = 5  # split 3 / 2: the ranks' window counts differ

CASES = {
    "magnitude": {"method": "Magnitude"},
    "wanda": {"method": "Wanda"},
    "wanda-out": {"method": "Wanda", "sparsity_out": True},
    "wanda-2of4": {"method": "Wanda", "weight": {"sparsity_type": "2:4"}},
    "wanda-disk": {"method": "Wanda"},  # activations in a file per rank (offload disk)
    "sparsegpt": {"method": "SparseGPT"},
    "sparsegpt-out": {"method": "SparseGPT", "sparsity_out": True},
    "sparsegpt-2of4": {"method": "SparseGPT", "weight": {"sparsity_type": "2:4"}},
    "owl": {"method": "OWL", "owl": {"lambda": 0.08}},
    "owl-2of4": {"method": "OWL", "weight": {"sparsity_type": "4:8"}, "owl": {"lambda": 0.2}},
    # RIA's reallocation: each owner records its Linears' column orders, rank 0 saves them all
    "ria-realloc-stream": {"method": "RIA", "ria": {"reallocation": True},
                           "weight": {"sparsity": 0.5, "sparsity_type": "2:4"}},
    # 3 probes: a round of 2 (one per rank), then one of 1 (rank 0 alone)
    "mixgpt": {"method": "MixGPT", "mixgpt": {"sensitivity": {"max_iter": 3, "tol": 0}}},
    # a structured pass first (3 blocks: one removed), then the method on the smaller model
    "shortgpt-wanda": {"structure": "ShortGPT", "depth": {"remove": 1}, "method": "Wanda",
                       "model_layers": 3},
    "contiguous": {"structure": "Contiguous", "depth": {"remove": 1}, "method": "none",
                   "weight": {"sparsity": 0}, "model_layers": 3},
    "width-wanda": {"structure": "Width", "width": {"heads": 1, "channels": 16},
                    "method": "Wanda"},
    # streamed: rank 0 writes each sliced block, the other rank reads it once written
    "width-wanda-stream": {"structure": "Width", "width": {"heads": 1, "channels": 16},
                           "method": "Wanda"},
    # a streamed MoE model stored fused: rank 0 writes each block's fused experts tensors,
    # the other rank reads its experts back from them
    "moe-sparsegpt-stream": {"method": "SparseGPT", "model": "qwen3_moe-fused"},
}
STRUCTURED = [name for name, sparse in CASES.items() if "structure" in sparse]


def before_torchruns_report(stderr: str) -> str:
    """What the ranks printed: torchrun's own ChildFailedError traceback comes after."""
    return stderr.split("Traceback (most recent call last)", 1)[0]


def torchrun(args, env=None, timeout=300, module=False):
    """`torchrun --standalone --nproc_per_node 2` of tests/torchrun_runs.py with config paths
    `args` (or of `-m llmc` with `args` when `module`)."""
    target = ["-m", "llmc"] if module else [str(RUNS)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", *target, *map(str, args)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=environment)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    """make(name, sparse, **sections) -> config path of a 2-block Llama run."""
    root = tmp_path_factory.mktemp("torchrun")
    calib = root / "calib.jsonl"
    calib.write_text("".join(json.dumps({"text": random_text(300, s)}) + "\n" for s in range(4)))
    evaluation = root / "eval.jsonl"
    evaluation.write_text("".join(json.dumps({"text": random_text(90, 50 + s)}) + "\n"
                                  for s in range(5)))
    model = save_model_dir(arch_model("llama", seed=3), tiny_tokenizer, root / "model")
    deeper = save_model_dir(arch_model("llama", seed=3, layers=3), tiny_tokenizer,
                            root / "model-3")
    moe = save_model_dir(arch_model("qwen3_moe", seed=3), tiny_tokenizer, root / "model-moe")
    as_fused(moe)

    def make(name, sparse, save_path=None, **sections):
        sparse = dict(sparse)
        path = deeper if sparse.pop("model_layers", 2) == 3 else model
        adapter = "Llama"
        if sparse.pop("model", None) == "qwen3_moe-fused":
            path, adapter = moe, "Qwen3Moe"
        config = {
            "base": {"seed": 0, "device": "cpu", **sections.pop("base", {})},
            "model": {"type": adapter, "path": path, **sections.pop("model", {})},
            "calib": {"name": "wikitext2", "path": str(calib), "n_samples": N_SAMPLES,
                      "seq_len": 32, "preproc": "wikitext2_gptq"},
            "eval": {"name": "wikitext2", "path": str(evaluation), "seq_len": 32,
                     "eval_pos": ["pretrain", "transformed"]},
            "sparse": {"weight": {"sparsity": 0.5}, **sparse},
            "save": {"save_trans": True, "save_path": str(save_path or root / name)},
            **sections,
        }
        path = root / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    make.root, make.model = root, model
    return make


@pytest.fixture(scope="module")
def runs(setup):
    """Every case run once by 2 ranks (one torchrun) and once in this process."""
    from llmc.cli import main

    paired = {}
    def base(name):
        if name.endswith("-stream"):
            return {"model": {"load": "stream"}}
        return {"base": {"offload_activations": "disk"}} if name.endswith("-disk") else {}

    distributed = [setup(f"{name}-2", sparse, **base(name)) for name, sparse in CASES.items()]
    done = torchrun(distributed)
    assert done.returncode == 0, done.stderr[-4000:]
    for name, sparse in CASES.items():
        assert main(["--config", str(setup(f"{name}-1", sparse, **base(name)))]) == 0
        paired[name] = tuple(load_run(setup.root / f"{name}-{n}") for n in (1, 2))
    paired["_stderr"] = done.stderr
    return paired


def load_run(save_path):
    results = json.loads((save_path / "results.json").read_text())
    tensors = {}
    for file in sorted((save_path / "transformed_model").glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return results, tensors


def linears(tensors):
    """The pruned weights' names: each Linear's, and a MoE layer's fused experts tensors."""
    return [name for name in tensors if ".layers." in name and
            name.endswith(("proj.weight", "experts.gate_up_proj", "experts.down_proj"))]


def near_tie(score_row, j, rel=1e-5):
    """Whether score j of a row is within float rounding of another score of the row."""
    others = torch.cat([score_row[:j], score_row[j + 1:]])
    return bool(((others - score_row[j]).abs() <= rel * score_row[j].abs()).any())


def assert_masks_agree_but_near_ties(setup, one, two):
    """>= 99.99% of the mask equal, each disagreement a near-tie of Wanda's score (input norms
    from a plain whole-model computation)."""
    from transformers import AutoModelForCausalLM

    from llmc.data import calib_batches
    from llmc.config import load_config
    from llmc.models import load_tokenizer

    names = linears(one)
    total = sum(one[n].numel() for n in names)
    differ = {n: torch.nonzero((one[n] == 0) != (two[n] == 0)) for n in names}
    count = sum(len(d) for d in differ.values())
    assert count <= 1e-4 * total, f"{count} of {total} mask entries differ"
    if not count:
        return
    cfg = load_config(str(setup.root / "wanda-1.yml"), [])
    batches = calib_batches(cfg.calib, load_tokenizer(cfg.model))
    model = AutoModelForCausalLM.from_pretrained(setup.model, dtype=torch.float32)
    modules = {n: model.get_submodule(n[:-len(".weight")]) for n in names}
    norms = plain_input_norms(model, list(modules.values()), batches)
    for name, where in differ.items():
        linear = modules[name]
        score = linear.weight.data.abs() * torch.sqrt(norms[id(linear)])
        for i, j in where.tolist():
            assert near_tie(score[i], j), f"{name}[{i},{j}] differs and is no near-tie"


def relative(a, b):
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(a.double()))


def assert_same_ppl(one, two):
    for position, sets in one["ppl"].items():
        for name, ppl in sets.items():
            assert abs(two["ppl"][position][name] - ppl) <= 1e-6 * ppl, (position, name)


def test_magnitude_is_identical(runs):
    (one_results, one), (two_results, two) = runs["magnitude"]
    assert sorted(one) == sorted(two)
    assert all(torch.equal(one[n], two[n]) for n in one)
    assert two_results["engine"]["ranks"] == 2 and one_results["engine"]["ranks"] == 1


@pytest.mark.parametrize("case", ["wanda", "wanda-out", "wanda-2of4", "wanda-disk", "owl",
                                  "owl-2of4"])
def test_wanda_and_owl_masks_agree_but_for_near_ties(runs, setup, case):
    (one_results, one), (two_results, two) = runs[case]
    assert_masks_agree_but_near_ties(setup, one, two)
    assert_same_ppl(one_results, two_results)
    if case.startswith("owl"):
        ones, twos = (r["plan"] for r in (one_results, two_results))
        assert ones["units"] == twos["units"] and len(ones["units"]) > 1
        for key in ("score", "sparsity"):  # outlier ratios and per-layer sparsities
            assert all(abs(a - b) <= 1e-6 for a, b in zip(ones[key], twos[key])), key


@pytest.mark.parametrize("case", ["sparsegpt", "sparsegpt-out", "sparsegpt-2of4", "mixgpt",
                                  "moe-sparsegpt-stream"])
def test_sparsegpt_masks_and_weights_agree(runs, case):
    (one_results, one), (two_results, two) = runs[case]
    if case.endswith("-stream"):
        assert one_results["engine"]["load"] == two_results["engine"]["load"] == "stream"
        assert sorted(one) == sorted(two) and any("gate_up_proj" in name for name in one)
    for name in linears(one):
        masks = ((one[name] == 0) == (two[name] == 0)).float().mean().item()
        assert masks >= 0.999, (name, masks)
        kept = (one[name] != 0) & (two[name] != 0)
        assert relative(one[name] * kept, two[name] * kept) <= 1e-4, name
    assert_same_ppl(one_results, two_results)
    if case == "mixgpt":  # the probes are shared out, the estimate is one process's
        assert one_results["plan"] == two_results["plan"]
        for key in ("probes", "converged"):
            assert one_results["method"]["sensitivity"][key] == \
                two_results["method"]["sensitivity"][key] == (3 if key == "probes" else False)


@pytest.mark.parametrize("case", STRUCTURED)
def test_a_structured_pass_removes_the_same_parts_on_two_ranks(runs, case):
    """The ranks' hidden-state measures and statistics are summed before the method chooses:
    the same blocks, KV groups and channels as one process, the measures within float
    rounding; the method after it then as its own case above."""
    (one_results, one), (two_results, two) = runs[case]
    load = "stream" if case.endswith("-stream") else "memory"
    assert one_results["engine"]["load"] == two_results["engine"]["load"] == load
    ones, twos = one_results["structure"], two_results["structure"]
    for key in ("blocks_removed", "widths", "blocks", "parameters"):
        assert ones[key] == twos[key], key
    for key in ("block_influence", "angular_distance"):
        assert all(abs(a - b) <= 1e-6 * abs(a) for a, b in zip(ones.get(key, []),
                                                               twos.get(key, []))), key
    assert sorted(one) == sorted(two)  # the same smaller model
    for name in linears(one):
        masks = ((one[name] == 0) == (two[name] == 0)).float().mean().item()
        assert masks >= 0.999, (name, masks)
    assert_same_ppl(one_results, two_results)


def test_reallocation_orders_are_gathered_and_saved_by_rank_0(runs, setup):
    """Streamed on 2 ranks: column_orders.safetensors names every block Linear, as one
    process's does, and each saved weight is 2:4 in its order; the masks agree as Wanda's."""
    from safetensors.torch import load_file

    (one_results, one), (two_results, two) = runs["ria-realloc-stream"]
    assert two_results["engine"]["load"] == "stream"
    orders = [load_file(setup.root / f"ria-realloc-stream-{n}" / "column_orders.safetensors")
              for n in (1, 2)]
    assert orders[0].keys() == orders[1].keys() and len(orders[1]) == 7 * 2
    for name, order in orders[1].items():
        weight = two[f"{name}.weight"]
        zeros = (weight[:, order] == 0).reshape(weight.shape[0], -1, 4).sum(-1)
        assert (zeros == 2).all(), name
    same = sum(torch.equal(orders[0][k], orders[1][k]) for k in orders[0])
    assert same >= len(orders[0]) - 2  # an order differs only where input norms nearly tie
    assert_same_ppl(one_results, two_results)


def test_outputs_are_written_once_by_rank_0(runs, setup):
    stderr = runs["_stderr"]
    assert "Traceback" not in stderr and "llmc: error" not in stderr
    for name in CASES:
        root = setup.root / f"{name}-2"
        assert len(list((root / ".llmc" / "runs").iterdir())) == 1
        assert not (root / ".llmc" / "scratch").exists()
    # rank 1 logs warnings only: every INFO line comes from rank 0
    info = [line for line in stderr.splitlines() if "| INFO" in line]
    assert info and all(line.startswith("rank 0 |") for line in info)


def test_a_failure_on_rank_1_ends_both_ranks_with_its_message(setup):
    path = setup("fails", {"method": "SparseGPT"}, base={"collective_timeout": 60})
    done = torchrun(["--config", path], module=True, timeout=150,
                    env={"LLMC_FAIL_AT": "block:written@0", "LLMC_FAULT_RANK": "1"})
    assert done.returncode != 0
    # (rank 0's line may follow its progress bar's last, unterminated line)
    lines = ["llmc:" + line.split("llmc:", 1)[1] for line in done.stderr.splitlines()
             if "llmc:" in line]
    # each rank says what failed on rank 1 (rank 0's own lost collective or SIGTERM is a
    # consequence, not news)
    assert lines == ["llmc: error: rank 1: injected fault at block:written (LLMC_FAIL_AT)"] * 2, \
        done.stderr[-3000:]
    # the one traceback is torchrun's own report (ChildFailedError); none comes from llmc
    frames = [line for line in done.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert frames and not any("/llmc/" in frame for frame in frames)
    assert not (setup.root / "fails" / "results.json").exists()


def test_a_streamed_run_resumes_under_the_same_number_of_ranks(setup, cli):
    sparse = {"method": "SparseGPT", "sparsity_out": True}
    path = setup("resumed", sparse, model={"load": "stream"})
    reference = setup("uninterrupted", sparse, model={"load": "stream"})
    killed = torchrun([path], env={"LLMC_FAIL_AT": "block:checkpointed@0"})
    assert killed.returncode != 0 and "injected fault" in killed.stderr
    code, stderr = cli("--config", path)  # one process cannot take over 2 ranks' activations
    assert code == 2 and "on 2 rank(s), and this run has 1" in error_line(stderr)
    done = torchrun([path, reference])
    assert done.returncode == 0, done.stderr[-3000:]
    (resumed, weights), (whole, expected) = (load_run(setup.root / n)
                                             for n in ("resumed", "uninterrupted"))
    assert resumed["resumed_at_block"] == 1 and resumed["engine"]["load"] == "stream"
    assert sorted(weights) == sorted(expected)
    assert all(torch.equal(weights[n], expected[n]) for n in weights)
    assert resumed["ppl"] == whole["ppl"]


def test_a_bad_config_under_torchrun_is_one_line_per_rank_before_any_work(setup):
    path = setup("bad", {"method": "Wanda"})
    done = torchrun(["--config", path, "--set", "calib.bs=2"], module=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.startswith("llmc:")]
    assert len(lines) == 2 and all("set calib.bs: 1" in line for line in lines), done.stderr
    assert done.stderr.count("exitcode  : 2") == 2  # both ranks exit 2, neither killed
    assert not (setup.root / "bad").exists()



def test_a_streamed_run_stopped_on_one_process_refuses_two_ranks_in_one_line(
        setup, cli, monkeypatch):
    """The other direction of the test above: an interrupted one-process run rerun on 2 ranks
    ends on each rank with the one line naming how many ranks to use, no traceback."""
    path = setup("one-then-two", {"method": "Wanda"}, model={"load": "stream"})
    monkeypatch.setenv("LLMC_FAIL_AT", "block:checkpointed@0")
    code, stderr = cli("--config", path)
    assert code != 0 and "injected fault" in stderr
    monkeypatch.delenv("LLMC_FAIL_AT")
    done = torchrun(["--config", path], module=True, timeout=120)
    assert 'File "' not in before_torchruns_report(done.stderr), done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("llmc:")]
    assert len(lines) == 2, done.stderr[-3000:]
    assert all("on 1 rank(s), and this run has 2" in line for line in lines), lines


def test_a_rank_killed_mid_loop_is_named_in_one_line_by_the_survivor(setup, tmp_path):
    """Rank 1 SIGKILLed once it finished block 0 (as the out-of-memory killer would): rank 0,
    whose next collective fails (or whom torchrun stops with SIGTERM meanwhile), prints one
    line naming the lost rank, no traceback; nothing is committed."""
    path = setup("lost-rank", {"method": "Wanda"})
    marker = tmp_path / "paused"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", "-m", "llmc", "--config", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LLMC_PAUSE_AT": "block:written@0",
           "LLMC_FAULT_RANK": "1", "LLMC_PAUSE_MARKER": str(marker)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() or len(marker.read_text().split()) < 2:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(int(marker.read_text().split()[1]), signal.SIGKILL)
        stderr = process.communicate(timeout=120)[1]
    finally:
        process.kill()
    assert 'File "' not in before_torchruns_report(stderr), stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("llmc:")]
    assert lines == [lines[0]] and "rank 0: rank 1 ended without a word" in lines[0], stderr
    assert not (setup.root / "lost-rank" / "results.json").exists()
