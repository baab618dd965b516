"""llmc/bench/semi_structured.py: which Linears are 2:4 (exact, on hand-made weights), the swap
of their weights for a converter's output, and bench-model's extra row for a 2:4 model. The
kernels themselves run only on CUDA: here the swap is driven by stand-in converters, and torch's
own converter must refuse every Linear on a CPU and leave the model as it was."""
import json

import pytest
import torch

from conftest import error_line, save_model_dir, tiny_model
from llmc.bench import semi_structured
from llmc.bench.cli import compare_models
from llmc.bench.measure import Settings
from llmc.cli import main
from llmc.errors import LlmcError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = Settings(prompt=8, new_tokens=2, batches=[1], repeats=1)


def two_four(weight):
    """`weight` with the 2 smallest magnitudes of every 4 consecutive inputs of each row zeroed."""
    rows, columns = weight.shape
    groups = weight.reshape(rows, columns // 4, 4).clone()
    smallest = groups.abs().argsort(dim=-1)[..., :2]
    return groups.scatter(-1, smallest, 0.0).reshape(rows, columns)


def test_is_two_four_on_hand_made_weights():
    kept = torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3],
                         [0.0, 4, 5, 0, 6, 0, 0, 0]])
    assert semi_structured.is_two_four(kept)
    three_in_a_group = kept.clone()
    three_in_a_group[1, 0] = 7.0
    assert not semi_structured.is_two_four(three_in_a_group)
    assert not semi_structured.is_two_four(torch.ones(2, 8))
    assert not semi_structured.is_two_four(torch.zeros(2, 6))  # 6 inputs: no groups of 4
    # 2:4 down the columns (the output dimension) is not the pattern the kernels compress
    columns_only = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert not semi_structured.is_two_four(columns_only)


def model_with_two_four_layer_0():
    """A tiny Llama whose block 0 Linears are 2:4 and every other Linear dense."""
    model = tiny_model("llama")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.0."):
                module.weight.copy_(two_four(module.weight))
    return model


def test_the_two_four_linears_are_exactly_the_pruned_ones():
    found = [name for name, _ in semi_structured.two_four_linears(model_with_two_four_layer_0())]
    assert found == [f"model.layers.0.{part}" for part in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


def rows_of_32(weight):
    """A stand-in converter with a tile rule, as the real backends have: a copy of `weight`."""
    if weight.shape[0] % 32:
        raise RuntimeError(f"rows {weight.shape[0]} are not a multiple of 32")
    return weight.clone()


def test_the_swap_converts_what_the_converter_takes_and_records_the_rest():
    model = model_with_two_four_layer_0()
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    originals = {name: m.weight for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear)}
    swapped = semi_structured.to_kernels(model, rows_of_32)
    assert swapped["linears"] == 5
    assert sorted(swapped["refused"]) == ["model.layers.0.self_attn.k_proj",
                                          "model.layers.0.self_attn.v_proj"]
    assert "not a multiple of 32" in swapped["refused"]["model.layers.0.self_attn.k_proj"]
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            replaced = module.weight is not originals[name]
            assert replaced == (name.startswith("model.layers.0.")
                                and name not in swapped["refused"]), name
            assert torch.equal(module.weight, originals[name])
    assert torch.equal(model(ids).logits, before)


def test_on_a_cpu_torchs_converter_refuses_every_linear_and_changes_nothing():
    model = model_with_two_four_layer_0()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    forced = torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS
    swapped = semi_structured.to_kernels(model, semi_structured.compress)
    assert swapped["linears"] == 0 and len(swapped["refused"]) == 7
    assert all("CUDA" in reason for reason in swapped["refused"].values())
    assert torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS == forced
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_kernels_are_used_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert semi_structured.kernels_for("auto", cpu) is None
    assert semi_structured.kernels_for("off", cuda) is None
    assert semi_structured.kernels_for("auto", cuda) is semi_structured.compress
    assert semi_structured.kernels_for("on", cuda) is semi_structured.compress
    with pytest.raises(LlmcError, match="needs a CUDA device"):
        semi_structured.kernels_for("on", cpu)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("semi")
    return (save_model_dir(tiny_model("llama"), tiny_tokenizer, root / "dense"),
            save_model_dir(model_with_two_four_layer_0(), tiny_tokenizer, root / "two-four"))


def test_a_two_four_model_gets_a_kernel_row_right_after_itself(saved, capsys):
    dense, pruned = saved
    record, table = compare_models([dense, pruned], torch.device("cpu"), FAST, rounds=2,
                                   convert=rows_of_32)
    order = [line.split("measuring ")[1] for line in capsys.readouterr().err.splitlines()
             if "measuring " in line]
    plain, kernels = f"{pruned} on cpu (round", f"{pruned} on cpu with its 2:4 Linears"
    # round 2 starts one row further on: the 2:4 model, its kernel row, the dense model
    assert [o.startswith(plain) for o in order] == [False, True, False, True, False, False]
    assert [o.startswith(kernels) for o in order] == [False, False, True, False, True, False]
    first, second, third = record["models"]
    assert "kernels" not in first and "kernels" not in second
    assert (first["two_four_linears"], second["two_four_linears"]) == (0, 7)
    assert third["path"] == second["path"] and third["kernels"] == "2:4 rows_of_32"
    assert third["kernel_linears"] == 5 and len(third["kernel_refused"]) == 2
    assert third["kernel_logits_max_abs_diff"] == 0.0 < third["logits_max_abs"]
    assert third["ratios"]["nonzero_parameters"] == second["ratios"]["nonzero_parameters"]
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 3 and "[2:4 rows_of_32 kernels, 5 of 7 2:4 Linears]" in rows[2]


def test_no_kernel_row_without_a_converter(saved):
    record, _ = compare_models(list(saved), torch.device("cpu"), FAST)
    assert len(record["models"]) == 2 and record["models"][1]["two_four_linears"] == 7


def test_the_dtype_and_kernel_settings_reach_the_json(saved, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench-model", *saved, "--prompt", "8", "--new-tokens", "2", "--batch", "1",
            "--repeats", "1", "--device", "cpu", "--dtype", "bfloat16", "--json", out]
    assert main([str(a) for a in argv]) == 0
    record = json.loads(out.read_text())
    assert record["settings"]["dtype"] == "bfloat16"
    assert record["settings"]["two_four_kernels"] == "auto"
    assert [m["dtype"] for m in record["models"]] == ["bfloat16"] * 2  # saved as float32
    assert len(record["models"]) == 2  # auto on a CPU: no kernel row


def test_kernels_on_without_cuda_is_one_line(saved, capsys):
    code = main(["bench-model", *map(str, saved), "--device", "cpu",
                 "--two-four-kernels", "on"])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and "needs a CUDA device" in line, line


def cut_short(weight):
    """A stand-in converter whose output the model cannot multiply by: a kernel that fails."""
    return weight[:, :-4].clone()


def test_a_kernel_row_that_fails_is_left_out_with_its_reason(saved, capsys):
    record, table = compare_models(list(saved), torch.device("cpu"), FAST, convert=cut_short)
    assert len(record["models"]) == 2 and len(table.splitlines()) == 6
    assert "kernel_error" in record["models"][1] and "kernel_error" not in record["models"][0]
    assert "on the 2:4 kernels failed, no row for it" in capsys.readouterr().err


class FailsAfterRoundOne:
    """A stand-in converter whose copies work in round 1 (7 Linears) and fail after it."""
    __name__ = "fails_after_round_one"

    def __init__(self):
        self.calls = 0

    def __call__(self, weight):
        self.calls += 1
        return weight.clone() if self.calls <= 7 else cut_short(weight)


def test_a_kernel_row_that_fails_in_a_later_round_keeps_its_other_rounds(saved, capsys):
    record, _ = compare_models(list(saved), torch.device("cpu"), FAST, rounds=3,
                               convert=FailsAfterRoundOne())
    dense, pruned, on_kernels = record["models"]
    assert (dense["rounds"], pruned["rounds"]) == (3, 3)
    assert "rounds" not in on_kernels and on_kernels["kernel_linears"] == 7  # round 1 alone
    err = capsys.readouterr().err
    assert err.count("on the 2:4 kernels failed in round") == 2
