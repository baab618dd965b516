"""lm-eval tasks in a run: a local two-task YAML set (offline), the figures equal to running
lm-eval directly on the saved model; a task whose data cannot be had fails up front."""
import json

import pytest

from conftest import error_line, random_text
from llmc.cli import main

lm_eval = pytest.importorskip("lm_eval")  # the [eval] extra; .ci/run installs it
from lm_eval.tasks import TaskManager  # noqa: E402

CHOICES = ["river", "city", "music", "water"]
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: {choices}
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


GROUP = """group: tiny_both
task:
  - tiny_pick
  - tiny_next
"""


@pytest.fixture
def local_tasks(tmp_path):
    """Two multiple-choice tasks, as task YAML files reading local JSON lines, and a group YAML
    of both beside them (tmp_path/tiny_both.yaml)."""
    (tmp_path / "tiny_both.yaml").write_text(GROUP)
    paths = []
    for index, name in enumerate(("tiny_pick", "tiny_next")):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"question": random_text(6 + index, seed),
                                            "label": (seed + index) % len(CHOICES)}) + "\n"
                                for seed in range(12)))
        path = tmp_path / f"{name}.yaml"
        path.write_text(TASK.format(name=name, data=data, choices=json.dumps(CHOICES)))
        paths.append(str(path))
    return paths


def test_tasks_equal_lm_eval_run_on_the_saved_model(run_config, tmp_path, local_tasks,
                                                    one_torch_thread):
    group = str(tmp_path / "tiny_both.yaml")  # the two tasks as one group YAML
    assert main(["--config", str(run_config), "--set", f"eval.tasks=[{group}]",
                 "--set", "eval.limit=10", "--set", "eval.tasks_bs=4"]) == 0
    results = json.loads((tmp_path / "save" / "results.json").read_text())
    direct = lm_eval.simple_evaluate(
        "hf", model_args=f"pretrained={tmp_path / 'save' / 'transformed_model'}",
        # as `lm_eval --include_path DIR --tasks tiny_both` (lm-eval 0.4.13 cannot load a group
        # by its file's path); lm-eval's own tasks left out of its index: faster, same figures
        tasks=["tiny_both"], limit=10, batch_size=4, device="cpu", log_samples=False,
        task_manager=TaskManager(include_defaults=False, include_path=str(tmp_path)))["results"]
    pruned = results["tasks"]["transformed"]
    assert sorted(pruned) == ["tiny_next", "tiny_pick"]
    for task, metrics in pruned.items():
        assert set(metrics) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
        for metric, value in metrics.items():
            assert value == direct[task][f"{metric},none"], (task, metric)
    assert sorted(results["tasks"]["pretrain"]) == ["tiny_next", "tiny_pick"]
    assert "eval_transformed_lm_eval" in results["timings"]


def test_task_data_that_cannot_be_had_fails_before_the_model(run_config, tmp_path, local_tasks,
                                                             cli):
    (tmp_path / "tiny_pick.jsonl").unlink()
    code, stderr = cli("--config", run_config, "--set", f"eval.tasks=[cloze,{local_tasks[0]}]")
    assert code == 2
    line = error_line(stderr)
    assert "tiny_pick" in line and "cannot be had" in line and "local task YAML" in line
    assert "loading" not in stderr.lower() and not (tmp_path / "save" / "results.json").exists()


def test_a_hub_task_offline_is_one_clear_error(run_config, monkeypatch, cli):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, stderr = cli("--config", run_config, "--set", "eval.tasks=[boolq]")
    assert code == 2
    line = error_line(stderr)
    assert "'boolq' cannot be had" in line and "hub" in line


def test_a_streamed_run_evaluates_the_checkpoint_and_the_saved_output(run_config, tmp_path,
                                                                      local_tasks,
                                                                      one_torch_thread):
    """No whole model in memory: lm-eval reads the checkpoint before pruning and the saved
    output after it, with the figures of lm-eval run on each directly."""
    assert main(["--config", str(run_config), "--set", "model.load=stream", "--set",
                 f"eval.tasks=[cloze,{local_tasks[0]}]", "--set", "eval.cloze_paragraphs=4",
                 "--set", "eval.limit=6"]) == 0
    results = json.loads((tmp_path / "save" / "results.json").read_text())
    assert results["engine"]["load"] == "stream"
    config = results["config"]["model"]["path"]
    for position, path in (("pretrain", config),
                           ("transformed", tmp_path / "save" / "transformed_model")):
        direct = lm_eval.simple_evaluate(
            "hf", model_args=f"pretrained={path}", tasks=local_tasks[:1], limit=6, batch_size=1,
            device="cpu", log_samples=False, task_manager=TaskManager(include_defaults=False))
        for metric, value in results["tasks"][position]["tiny_pick"].items():
            assert value == direct["results"]["tiny_pick"][f"{metric},none"], (position, metric)
        assert results["tasks"][position]["cloze"]["paragraphs"] == 4


def test_a_streamed_run_without_its_saved_output_is_refused(run_config, local_tasks, cli):
    code, stderr = cli("--config", run_config, "--set", "model.load=stream", "--set",
                       f"eval.tasks=[{local_tasks[0]}]", "--set", "save.save_trans=False")
    assert code == 2
    assert "save.save_trans: True" in error_line(stderr)
