"""Hutchinson's estimator on a quadratic loss whose Hessian is known exactly."""
import torch

from llmc.sparse.hutchinson import Probe, hutchinson_traces, rademacher


def _quadratic(seed=0):
    """loss(x) = x^T A x / 2 over x = (a: 3 entries, b: 2x2): the Hessian is A, so a's trace is
    tr(A[:3, :3]) and b's tr(A[3:, 3:]); A's off-diagonal blocks are what the shared probe adds
    as noise."""
    gen = torch.Generator().manual_seed(seed)
    root = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    hessian = root @ root.T + torch.diag(torch.arange(1.0, 8.0, dtype=torch.float64))
    x = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)

    def hvp(vectors, reduce):
        v = torch.cat([vectors[0].flatten(), vectors[1].flatten()]).to(torch.float64)
        (grad,) = torch.autograd.grad(0.5 * x @ hessian @ x, x, create_graph=True)
        (product,) = torch.autograd.grad(grad, x, v)
        return [reduce(vectors[0], product[:3]), reduce(vectors[1], product[3:].reshape(2, 2))]

    shapes = {"a": torch.Size([3]), "b": torch.Size([2, 2])}
    exact = {"a": float(torch.diag(hessian)[:3].sum()), "b": float(torch.diag(hessian)[3:].sum())}
    return hvp, shapes, exact


def test_converges_to_the_true_trace_of_each_block():
    hvp, shapes, exact = _quadratic()
    traces, probes, converged = hutchinson_traces(hvp, shapes, max_iter=4000, tol=0, seed=1)
    assert probes == 4000 and not converged  # tol 0 never stops early
    for name in shapes:
        assert abs(traces[name] - exact[name]) < 0.02 * exact[name], (name, traces, exact)


def test_error_shrinks_with_more_probes():
    hvp, shapes, exact = _quadratic()

    def error(probes):
        traces, _, _ = hutchinson_traces(hvp, shapes, probes, 0, seed=3)
        return sum(abs(traces[n] - exact[n]) for n in shapes)

    assert error(4000) < error(10)


def test_same_seed_same_estimate_and_tol_stops_early():
    hvp, shapes, _ = _quadratic()
    first = hutchinson_traces(hvp, shapes, 50, 0, seed=5)
    assert first == hutchinson_traces(hvp, shapes, 50, 0, seed=5)
    assert first[0] != hutchinson_traces(hvp, shapes, 50, 0, seed=6)[0]
    traces, probes, converged = hutchinson_traces(hvp, shapes, 10_000, 0.01, seed=5)
    assert converged and 2 <= probes < 10_000


def test_single_probe_is_exact_for_a_diagonal_hessian():
    # v_i^2 = 1, so v^T D v = tr(D) for any Rademacher v: one probe gives the exact trace.
    diagonal = torch.tensor([1.0, 2.0, 3.0, 4.0])
    traces, probes, _ = hutchinson_traces(lambda vs, reduce: [reduce(vs[0], vs[0] * diagonal)],
                                          {"w": torch.Size([4])}, 1, 0, seed=0)
    assert traces == {"w": 10.0} and probes == 1


def test_a_probe_draws_the_same_vectors_each_time_it_is_read():
    shapes = [torch.Size([3, 5]), torch.Size([7]), torch.Size([2, 2])]
    generator = torch.Generator().manual_seed(9)
    drawn = [rademacher(shape, generator) for shape in shapes]
    after = torch.randint(0, 10**6, (4,), generator=generator)
    generator = torch.Generator().manual_seed(9)
    probe = Probe(shapes, generator)
    assert torch.equal(torch.randint(0, 10**6, (4,), generator=generator), after)  # moved on
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(probe, drawn)) and len(probe) == 3
    assert all(torch.equal(a, b) for a, b in zip(probe[1:], drawn[1:]))


def test_rademacher_is_plus_minus_one_bytes():
    v = rademacher((1000,), torch.Generator().manual_seed(0))
    assert v.dtype == torch.int8 and set(v.tolist()) == {-1, 1}
    assert abs(float(v.float().mean())) < 0.1
