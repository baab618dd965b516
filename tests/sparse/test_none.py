"""`sparse.method: none`: no weight pruned (a structured run alone), and a target is refused."""
import pytest
import torch

from conftest import CPU, arch_adapter, arch_model, token_batches
from llmc.config import sparse_config
from llmc.errors import ConfigError
from llmc.models import ModelHandle
from llmc.runner import prune_blockwise
from llmc.sparse import UniformPlan, build_method


def test_none_prunes_no_weight():
    cfg = sparse_config(method="none", weight={"sparsity": 0})
    model = arch_model("llama")
    before = {name: p.clone() for name, p in model.named_parameters()}
    prune_blockwise(ModelHandle(model, arch_adapter("llama")), build_method(cfg),
                    UniformPlan(cfg.weight), token_batches(2, 16, 1), CPU)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert not build_method(cfg).calibrates(cfg)  # nothing to calibrate without a structure


@pytest.mark.parametrize("weight", [{"sparsity": 0.5}, {"sparsity": 0, "sparsity_type": "2:4"}])
def test_none_refuses_a_target(weight):
    with pytest.raises(ConfigError, match="sparse.method none prunes no weights"):
        sparse_config(method="none", weight=weight)
