"""`llmc bench-model` (llmc/bench/) on two tiny saved models, a dense one and a pruned copy:
the table's structure, ratios computed from the recorded figures, the JSON keys, one error line
for a directory that is not a model. No timing is asserted (docs/testing.md)."""
import json
import statistics

import pytest
import torch

from conftest import error_line, save_model_dir, tiny_model
from llmc.bench.compare import ratios
from llmc.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["--prompt", "8", "--new-tokens", "4", "--batch", "1", "2", "--repeats", "2",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    """(dense dir, pruned dir): the pruned copy has half of each block Linear's weights zeroed."""
    root = tmp_path_factory.mktemp("bench")
    dense = tiny_model("llama")
    pruned = tiny_model("llama")
    zeroed = 0
    with torch.no_grad():
        for name, param in pruned.named_parameters():
            if ".layers." in name and name.endswith("proj.weight"):
                param.view(-1)[: param.numel() // 2] = 0
                zeroed += param.numel() // 2
    return (save_model_dir(dense, tiny_tokenizer, root / "dense"),
            save_model_dir(pruned, tiny_tokenizer, root / "pruned"), zeroed)


def test_the_table_and_the_json_hold_every_figure_and_its_ratio(models, tmp_path, capsys):
    dense, pruned, zeroed = models
    out = tmp_path / "bench.json"
    assert main(["bench-model", dense, pruned, *FAST, "--json", out]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("on CPU, 1 thread(s); prompt 8, 4 new tokens, median of 2")
    header = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert header == ["model", "parameters", "non-zero", "checkpoint MB", "peak memory MB",
                      "prefill tok/s bs1", "prefill tok/s bs2", "decode tok/s bs1",
                      "decode tok/s bs2"]
    rows = [line for line in table[4:] if line.startswith("|")]
    assert len(rows) == 2 and str(dense) in rows[0] and str(pruned) in rows[1]
    assert all("(1.00x)" in cell for cell in rows[0].strip("|").split("|")[2:]
               if cell.strip())

    record = json.loads(out.read_text())
    assert record["settings"] == {"prompt": 8, "new_tokens": 4, "batches": [1, 2], "repeats": 2,
                                  "seed": 0, "dtype": "auto", "two_four_kernels": "auto"}
    first, second = record["models"]
    assert first["parameters"] == second["parameters"] > 0
    assert first["nonzero_parameters"] - second["nonzero_parameters"] == zeroed
    for model in record["models"]:
        for batch in (1, 2):
            seconds = model["seconds"]
            assert model[f"prefill_tokens_per_s_bs{batch}"] == pytest.approx(
                batch * 8 / seconds[f"prefill_bs{batch}"])
            assert model[f"decode_tokens_per_s_bs{batch}"] == pytest.approx(
                batch * 4 / (seconds[f"generate_bs{batch}"] - seconds[f"prefill_bs{batch}"]))
        for key, ratio in model["ratios"].items():  # each ratio from the recorded figures
            assert ratio == pytest.approx(model[key] / first[key]), key
    assert second["ratios"]["nonzero_parameters"] < 1.0 == first["ratios"]["nonzero_parameters"]


def test_rounds_measure_the_models_in_turn_and_keep_medians(models, tmp_path, capsys):
    dense, pruned, _ = models
    out = tmp_path / "bench.json"
    assert main(["bench-model", dense, pruned, *FAST, "--rounds", "3", "--json", out]) == 0
    err = capsys.readouterr().err
    order = [line.split("measuring ")[1].split(" on ")[0] for line in err.splitlines()
             if "measuring " in line]
    # in turn, not one model's rounds together, each round starting one model further on
    assert order == [dense, pruned, pruned, dense, dense, pruned]
    record = json.loads(out.read_text())
    assert record["rounds"] == 3
    for model in record["models"]:
        assert model["rounds"] == 3
        for key, values in model["per_round"].items():
            assert len(values) == 3 and model[key] == statistics.median(values), key
        for key, ratio in model["ratios"].items():
            assert ratio == pytest.approx(model[key] / record["models"][0][key]), key


def test_ratios_are_none_where_a_figure_is_missing():
    figures = [{"parameters": 10, "peak_memory_bytes": None},
               {"parameters": 5, "peak_memory_bytes": 3}]
    got = ratios(figures, [])
    assert got[1]["parameters"] == 0.5 and got[1]["peak_memory_bytes"] is None


def broken(directory):
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"junk")
    return directory


@pytest.mark.parametrize("make,words", [
    (lambda d: d, "is not a saved model"),                        # an empty directory
    (lambda d: d / "missing", "is not a directory"),
    (broken, "does not load as a causal LM"),
])
def test_a_directory_that_is_not_a_model_is_one_line(models, tmp_path, capsys, make, words):
    code = main(["bench-model", models[0], make(tmp_path), *FAST])
    line = error_line(capsys.readouterr().err)
    assert code == 2 and words in line and "bench-model" in line, line


def test_bad_arguments_are_one_line(capsys):
    assert main(["bench-model", "x", "--device", "tpu"]) == 2
    assert "--device tpu" in error_line(capsys.readouterr().err)
