"""Mask rules on small hand-made matrices, against the exact masks the reference rules give."""
import torch

from llmc.sparse.masks import layer_threshold_mask, n_m_mask, row_lowest_mask


def test_layer_threshold_is_reference_rule():
    score = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    # reference: thresh = sorted[int(8 * 0.5)] = 5, prune score <= 5
    expected = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(layer_threshold_mask(score, 0.5), expected)


def test_layer_threshold_zero_sparsity_prunes_nothing():
    assert not layer_threshold_mask(torch.rand(3, 5), 0.0).any()


def test_row_lowest_exact_count_and_stable_ties():
    score = torch.tensor([[3.0, 1.0, 2.0, 1.0, 9.0, 0.5],
                          [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    mask = row_lowest_mask(score, 0.5)  # floor(6 * 0.5) = 3 per row
    assert torch.equal(mask[0], torch.tensor([0, 1, 0, 1, 0, 1], dtype=torch.bool))
    # all tied: a stable sort keeps the first three columns
    assert torch.equal(mask[1], torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool))


def test_row_lowest_equals_stable_sort_with_many_ties():
    torch.manual_seed(0)
    score = torch.randint(0, 5, (64, 96)).float()  # five values: ties everywhere
    score[:4] = 0.0
    score[4:12] = torch.rand(8, 96)  # rows without ties beside them
    for sparsity in (0.1, 0.5, 0.73, 0.99):
        count = int(96 * sparsity)
        expected = torch.zeros_like(score, dtype=torch.bool)
        expected.scatter_(1, torch.sort(score, dim=-1, stable=True)[1][:, :count], True)
        assert torch.equal(row_lowest_mask(score, sparsity), expected)


def test_row_lowest_floors_the_count():
    mask = row_lowest_mask(torch.rand(4, 7), 0.5)  # floor(3.5) = 3
    assert mask.sum(dim=1).tolist() == [3, 3, 3, 3]


def test_n_m_hand_example():
    score = torch.tensor([[4.0, 3.0, 2.0, 1.0, 1.0, 5.0, 0.0, 7.0]])
    assert torch.equal(n_m_mask(score, 2, 4),
                       torch.tensor([[0, 0, 1, 1, 1, 0, 1, 0]], dtype=torch.bool))


def test_n_m_matches_reference_loop_and_holds_in_every_group():
    torch.manual_seed(0)
    score = torch.rand(16, 32)
    for n, m in [(2, 4), (4, 8), (1, 4), (5, 8)]:
        reference = torch.zeros_like(score, dtype=torch.bool)
        for start in range(0, score.shape[1], m):  # the reference repos' column loop
            block = score[:, start:start + m]
            reference.scatter_(1, start + torch.topk(block, n, dim=1, largest=False)[1], True)
        mask = n_m_mask(score, n, m)
        assert torch.equal(mask, reference)
        assert (mask.reshape(16, -1, m).sum(-1) == n).all()


def test_n_m_trailing_partial_group():
    score = torch.tensor([[1.0, 2.0, 3.0, 4.0, 9.0, 8.0]])  # 2:4 with a tail of 2 columns
    assert torch.equal(n_m_mask(score, 2, 4),
                       torch.tensor([[1, 1, 0, 0, 1, 1]], dtype=torch.bool))
