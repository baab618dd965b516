"""RIA's score and masks against hand-checked values and the paper's formula."""
import torch

from llmc.config import sparse_config
from llmc.registry import METHODS
from llmc.sparse import UniformPlan
from llmc.sparse.ria import ria_score


def _prune(weight, input_norms, sparsity_type="unstructured", sparsity=0.5, **ria):
    cfg = sparse_config(method="RIA", ria=ria,
                        weight={"sparsity": sparsity, "sparsity_type": sparsity_type})
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight.clone()
    METHODS["RIA"](cfg).prune(linear, {"input_norms": input_norms},
                              UniformPlan(cfg.weight).target(0, ""))
    return linear.weight.data == 0


W = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
NORMS = torch.tensor([4.0, 16.0])  # ||X_0|| = 2, ||X_1|| = 4


def test_score_by_hand():
    """Column sums of |W| 4, 6; row sums 3, 7; ||X_j||^0.5 = sqrt 2, 2."""
    expected = torch.tensor([[(1 / 4 + 1 / 3) * 2 ** 0.5, (2 / 6 + 2 / 3) * 2],
                             [(3 / 4 + 3 / 7) * 2 ** 0.5, (4 / 6 + 4 / 7) * 2]])
    torch.testing.assert_close(ria_score(W, NORMS, 0.5), expected, rtol=1e-6, atol=0)
    # a = 0: the relative importance alone; a = 1: times ||X_j|| itself
    torch.testing.assert_close(ria_score(W, NORMS, 0.0),
                               torch.tensor([[1 / 4 + 1 / 3, 1.0], [3 / 4 + 3 / 7, 4 / 6 + 4 / 7]]))
    torch.testing.assert_close(ria_score(W, NORMS, 1.0)[:, 1],
                               torch.tensor([1.0 * 4, (4 / 6 + 4 / 7) * 4]))


def test_unstructured_is_the_references_one_threshold():
    """Scores 0.825, 2.0 / 1.667, 2.476: the reference prunes score <= sorted[int(4 * 0.5)]
    = 2.0, three entries (its `<=` takes the threshold entry too), across rows."""
    assert _prune(W, NORMS).tolist() == [[True, True], [True, False]]


def test_per_outneuron_prunes_a_count_per_row():
    assert _prune(W, NORMS, per_outneuron=True).tolist() == [[True, False], [True, False]]


def test_n_m_against_the_formula():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 16, generator=gen)
    norms = torch.rand(16, generator=gen) + 0.1
    mask = _prune(weight, norms, "2:4", a=0.7)
    w = weight.double().abs()
    score = (w / w.sum(0, keepdim=True) + w / w.sum(1, keepdim=True)) * norms.double() ** 0.35
    for row in range(6):
        for group in range(4):
            cols = slice(4 * group, 4 * group + 4)
            lowest = set(torch.topk(score[row, cols], 2, largest=False)[1].tolist())
            assert {i for i in range(4) if mask[row, cols][i]} == lowest
