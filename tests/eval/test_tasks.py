"""The tasks in a run: cloze's figures in results.json and the last log lines, and pruning
untouched by them (bit-identical weights with and without)."""
import json

from safetensors.torch import load_file


def test_cloze_in_a_run_changes_no_weight(run_config, tmp_path, cli, one_torch_thread):
    code, _ = cli("--config", run_config, "--set", f"save.save_path={tmp_path / 'plain'}")
    assert code == 0
    code, stderr = cli("--config", run_config, "--set", "eval.tasks=[cloze]", "--set",
                       "eval.cloze_paragraphs=6", "--set", f"save.save_path={tmp_path / 'cloze'}")
    assert code == 0, stderr
    results = json.loads((tmp_path / "cloze" / "results.json").read_text())
    figures = {p: results["tasks"][p]["cloze"] for p in ("pretrain", "transformed")}
    for metrics in figures.values():
        assert set(metrics) == {"acc", "acc_stderr", "ppl", "paragraphs"}
        assert metrics["paragraphs"] == 6 and 0 <= metrics["acc"] <= 1
    summary = stderr[stderr.rindex("done: "):].splitlines()
    assert (f"  cloze acc (dense -> pruned): {figures['pretrain']['acc']:.4f} -> "
            f"{figures['transformed']['acc']:.4f}") in summary
    plain, cloze = (load_file(tmp_path / name / "transformed_model" / "model.safetensors")
                    for name in ("plain", "cloze"))
    assert plain.keys() == cloze.keys()
    assert all(plain[k].equal(cloze[k]) for k in plain)
