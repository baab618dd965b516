"""The ADMM weight update: its converged solution is the direct least-squares solve of the masked
problem; the mask is kept exactly; the gradual variant's masks follow its schedule."""
import pytest
import torch

from llmc.config import sparse_config
from llmc.errors import ConfigError
from llmc.runner.stats import InputGram
from llmc.sparse import Target
from llmc.sparse.admm import admm_system, admm_update, gradual_keep


def _problem(seed, rows=6, columns=12, tokens=200):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, columns, generator=generator) * (torch.rand(columns, generator=generator) + 0.5)
    weight = torch.randn(rows, columns, generator=generator)
    pruned = torch.rand(rows, columns, generator=generator).argsort(1) < columns // 2
    gram = InputGram(columns, "cpu")
    for window in x.reshape(4, -1, columns):
        gram.add(window.unsqueeze(0))
    return x.double(), weight, pruned, gram.value


def _least_squares(weight, pruned, gram):
    """Per row, the kept weights w'_S minimising (w - w') G (w - w')^T: w'_S = w G[:, S] G[S, S]^-1."""
    solution = torch.zeros_like(weight, dtype=torch.float64)
    w = weight.double()
    for r in range(w.shape[0]):
        kept = ~pruned[r]
        solution[r, kept] = torch.linalg.solve(gram[kept][:, kept], (w[r] @ gram[:, kept]))
    return solution


@pytest.mark.parametrize("seed", range(3))
def test_converged_admm_is_the_masked_least_squares_solution(seed):
    x, weight, pruned, gram = _problem(seed)
    system = admm_system(gram, percdamp=0.0, rho=1.0)
    updated = admm_update(weight, ~pruned, system, iterations=400, rho=1.0)
    expected = _least_squares(weight, pruned, x.t() @ x)  # min ||W X - W' X||^2
    assert (updated[pruned] == 0).all()
    assert torch.allclose(updated.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    # and it beats keeping the dense values of the kept weights
    masked = weight.masked_fill(pruned, 0).double()
    error = lambda w: ((weight.double() - w) @ x.t()).pow(2).sum()  # noqa: E731
    assert error(updated.double()) < error(masked)


def test_damping_is_the_reference_s_normalised_ridge():
    """With percdamp p the objective is (w - w')(X^T X + rho0 D^2)(w - w')^T, D the input norms,
    rho0 = p * mean(diag of the normalised X^T X) (about p)."""
    x, weight, pruned, gram = _problem(7)
    system = admm_system(gram, percdamp=0.1, rho=1.0)
    updated = admm_update(weight, ~pruned, system, iterations=400, rho=1.0)
    h = gram.double()
    norm = torch.sqrt(torch.diag(h)) + 1e-8
    rho0 = 0.1 * (torch.diag(h) / norm ** 2).mean()
    expected = _least_squares(weight, pruned, h + rho0 * torch.diag(norm ** 2))
    assert torch.allclose(updated.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_gradual_masks_follow_the_reference_schedule():
    torch.manual_seed(0)
    magnitude = torch.rand(64, 32)  # columns x rows, as the update works
    # per_out: sparsity s (1 - (1 - t / steps)^3) per output row (a column here)
    for step in (0, 4, 9):
        keep = gradual_keep(magnitude, Target(0.6), step, 10, per_out=True)
        expected = int(64 * (0.6 - 0.6 * (1 - (step + 1) / 10) ** 3))
        assert ((~keep).sum(0) == expected).all()
    # the reference's unstructured path prunes the full target at every step
    keep = gradual_keep(magnitude, Target(0.6), 0, 10, per_out=False)
    assert int((~keep).sum()) == int(64 * 32 * 0.6)
    # N:M: at the last step exactly N of every M of each row (input groups of M)
    keep = gradual_keep(magnitude, Target(0.5, (2, 4)), 9, 10, per_out=False)
    assert ((~keep).t().reshape(32, -1, 4).sum(-1) == 2).all()
    early = gradual_keep(magnitude, Target(0.5, (2, 4)), 0, 10, per_out=False)
    assert int((~early).sum()) == int(64 * 32 * (0.5 - 0.5 * 0.9 ** 3))


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="iterations must be >= 1"):
        sparse_config(method="Wanda", update="admm", admm={"iterations": 0})
    with pytest.raises(ConfigError, match="steps must be in 1..admm.iterations"):
        sparse_config(method="Wanda", update="admm_gradual", admm_gradual={"steps": 30})
    with pytest.raises(ConfigError, match="cannot follow SparseGPT"):
        sparse_config(method="SparseGPT", update="admm")
    with pytest.raises(ConfigError, match="not RIA's"):
        sparse_config(method="RIA", update="admm_gradual")
    with pytest.raises(ConfigError, match="would be ignored"):
        sparse_config(method="Wanda", refine="dsnot", update="admm_gradual")
    with pytest.raises(ConfigError, match="sparse.admm_gradual is a setting of update: "
                                          "admm_gradual; Wanda \\+ update: admm does not use it"):
        sparse_config(method="Wanda", update="admm", admm_gradual={"steps": 3})
