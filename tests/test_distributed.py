"""llmc/distributed.py without processes: what a rank owns, the single-process World being the
identity, the config checks under torchrun, and the statistics' combination (with a stand-in
for the all-reduce that sums what two simulated ranks hold)."""
import pytest
import torch

from llmc.config import load_config
from llmc.distributed import World, check_ranks
from llmc.errors import ConfigError
from llmc.runner.stats import Hessian, InputNorms, combine_means


def test_a_rank_holds_every_nth_window():
    windows = list(range(7))
    assert World(rank=0, size=2).share(windows) == [0, 2, 4, 6]
    assert World(rank=1, size=2).share(windows) == [1, 3, 5]
    assert World().share(windows) == windows


def test_linears_go_largest_first_to_the_least_loaded_rank():
    # SparseGPT's cost (rows x columns^2) of SmolLM2-135M's block: q, k, v, o, gate, up, down
    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576),
              (576, 1536)]
    costs = [rows * columns ** 2 for rows, columns in shapes]
    owners = World(rank=0, size=2).owners(costs)
    assert owners == [1, 0, 1, 1, 1, 1, 0]  # down_proj with k_proj; the rest on rank 1
    load = [sum(c for c, o in zip(costs, owners) if o == r) for r in (0, 1)]
    assert round(max(load) / sum(costs), 3) == 0.507  # the best of all 2-way splits
    assert World().owners(costs) == [0] * 7
    # ties go to the lowest rank, so every rank computes the same assignment
    assert World(rank=1, size=3).owners([1, 1, 1, 1]) == [0, 1, 2, 0]


def test_packed_collectives_give_each_tensor_its_own_result():
    class Doubling(World):  # a 2-rank all-reduce / broadcast where both ranks hold the same
        def __init__(self, rank=0):
            super().__init__(rank=rank, size=2)
            self.calls = 0

        def sum(self, tensor):
            self.calls += 1
            return tensor.mul_(2)

        def broadcast(self, tensor, src):
            self.calls += 1
            if self.rank != src:
                tensor.copy_(self.sent.pop(0))
            else:
                self.sent = [tensor.clone()]
            return tensor

    tensors = [torch.arange(4.0), torch.ones(2, 3), torch.arange(3, dtype=torch.float64)]
    world = Doubling()
    world.sum_all(tensors)
    assert world.calls == 2  # the two float32 tensors packed, the float64 one alone
    assert torch.equal(tensors[0], torch.arange(4.0) * 2) and torch.equal(tensors[1],
                                                                         torch.full((2, 3), 2.0))
    sender, receiver = Doubling(rank=0), Doubling(rank=1)
    weights = [torch.randn(3, 4).bfloat16(), torch.randn(2, 2).bfloat16()]
    copies = [torch.zeros_like(w) for w in weights]
    sender.broadcast_all(weights, 0)
    receiver.sent = sender.sent
    receiver.broadcast_all(copies, 0)
    assert all(torch.equal(w, c) for w, c in zip(weights, copies))


def test_one_process_calls_no_collective():
    world, tensor = World(), torch.arange(3.0)
    assert not world.distributed and world.leads
    assert world.sum(tensor) is tensor and torch.equal(tensor, torch.arange(3.0))
    assert world.broadcast(tensor, 0) is tensor
    assert world.broadcast_object({"a": 1}) == {"a": 1}
    assert world.collect(5) == [5] and world.all_true(False) is False
    world.barrier()
    world.publish_failure("x", 2)
    assert world.peer_failure(wait=0) is None


def test_torchrun_needs_one_window_per_batch_and_per_rank(run_config):
    calib = load_config(str(run_config), []).calib
    check_ranks(calib, 1)
    check_ranks(calib, 2)
    calib.bs = 2
    with pytest.raises(ConfigError, match="calib.bs: 1"):
        check_ranks(calib, 2)
    check_ranks(calib, 1)  # one process: any batch size
    calib.bs, calib.n_samples = 1, 3
    with pytest.raises(ConfigError, match="at least 4"):
        check_ranks(calib, 4)


def test_the_config_is_checked_against_torchruns_world_size(run_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="calib.bs is 4"):
        load_config(str(run_config), ["calib.bs=4"])
    load_config(str(run_config), [])


class TwoRanks(World):
    """Stands in for the all-reduce: sum() adds the other rank's tensor, handed over in turn."""

    def __init__(self):
        super().__init__(rank=0, size=2)
        self.others = []

    def sum(self, tensor):
        tensor += self.others.pop(0)
        return tensor


@pytest.mark.parametrize("statistic", [InputNorms, Hessian])
def test_combined_statistics_are_the_mean_over_all_windows(statistic):
    generator = torch.Generator().manual_seed(0)
    windows = [torch.randn(1, 6, 5, generator=generator, dtype=torch.float64) for _ in range(5)]
    whole, mine, theirs = (statistic(5, "cpu") for _ in range(3))
    for index, window in enumerate(windows):
        whole.add(window)
        (mine if index % 2 == 0 else theirs).add(window)  # rank 0: 3 windows, rank 1: 2
    world = TwoRanks()
    world.others = [torch.tensor([float(theirs.windows)], dtype=torch.float64),
                    theirs.value * theirs.windows]
    combine_means([mine], world)
    assert mine.windows == 5
    torch.testing.assert_close(mine.value, whole.value, rtol=1e-5, atol=1e-6)
