"""Zero-shot (or few-shot) tasks through EleutherAI's lm-evaluation-harness (`pip install -e
".[eval]"`): its task names (boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge,
openbookqa, ...) or paths of local task YAML files.

The harness fetches a named task's dataset from the Hugging Face hub (and caches it); the tasks
are loaded, data included, before any heavy work, so a machine without the network fails up
front with one clear line. A local task YAML with local data files needs no network
(docs/eval.md). The model is evaluated through lm-eval's own HF wrapper (HFLM), around the model
in memory or on a saved directory, with lm-eval's own defaults, so the numbers equal running
`lm_eval` on the saved model with the same task, num_fewshot, limit and batch size.
"""
import contextlib
import copy
import importlib.util
import os
import random
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from ..errors import LlmcError

YAML_SUFFIXES = (".yaml", ".yml")
METRIC_FILTER = "none"  # lm-eval's key suffix for a metric computed without a filter


def is_task_file(name: str) -> bool:
    return name.endswith(YAML_SUFFIXES) or os.sep in name


def installed() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


class LoadedTasks(dict):
    """{task name: lm-eval Task}, with the TaskManager that loaded them (simple_evaluate would
    otherwise index every lm-eval task again, seconds each time)."""

    def __init__(self, manager, tasks):
        super().__init__(tasks)
        self.manager = manager


def load_tasks(names) -> LoadedTasks:
    """The lm-eval tasks of `names` (groups expanded to their tasks), their data loaded; an
    LlmcError naming the task and the fix when lm-eval cannot have it."""
    if not installed():
        raise LlmcError(f"eval.tasks names lm-eval tasks ({', '.join(names)}) but "
                        "lm-evaluation-harness is not installed: pip install -e \".[eval]\"")
    from lm_eval.tasks import TaskManager

    # lm-eval's index of its own tasks takes seconds to build: only when a name needs it. A task
    # file's directory is indexed, so that a group YAML finds the task YAMLs beside it.
    folders = sorted({str(Path(name).resolve().parent) for name in names if is_task_file(name)})
    manager = TaskManager(include_defaults=not all(map(is_task_file, names)),
                          include_path=folders or None)
    tasks = {}
    for name in names:
        try:
            loaded = manager.load([_indexed_name(manager, name)])
        except KeyError:
            raise LlmcError(f"eval.tasks: '{name}' is no lm-eval task, group or task YAML file; "
                            "list them with `lm_eval ls tasks`") from None
        except Exception as err:  # datasets' errors have many types: no network, no such file
            text = " ".join(str(err).split())[:300]
            raise LlmcError(f"eval.tasks: the data of lm-eval task '{name}' cannot be had "
                            f"({type(err).__name__}: {text}); lm-eval downloads it from the "
                            "Hugging Face hub: run once where the hub is reachable (it is "
                            "cached), or give a local task YAML with local data files "
                            "(docs/eval.md)") from None
        tasks.update(loaded["tasks"])
    logger.info(f"lm-eval tasks ready: {', '.join(tasks)}")
    return LoadedTasks(manager, tasks)


def _indexed_name(manager, name: str) -> str:
    """A group YAML file by its group name (lm-eval 0.4.13 fails to load a group by its path,
    and finds it by name once its directory is indexed); any other name as it is."""
    if not is_task_file(name):
        return name
    path = Path(name).resolve()
    for key, entry in manager.task_index.items():
        if (entry.yaml_path is not None and entry.kind.name == "GROUP"
                and Path(entry.yaml_path).resolve() == path):
            return key
    return name


@contextlib.contextmanager
def rng_kept():
    """lm-eval seeds Python's, NumPy's and torch's global generators: the run's own draws after
    an evaluation are those of a run without it."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def evaluate_tasks(tasks, model, tokenizer, ev, device, dtype="auto") -> dict:
    """{task: {metric: value}} of `model` (a model in memory, or a model directory, loaded as
    `dtype`) on the loaded `tasks`: every numeric metric lm-eval reports (acc, acc_norm, their
    stderr, ...); a metric computed under a filter other than none keeps it as `metric,filter`."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    with rng_kept():
        if isinstance(model, (str, os.PathLike)):
            lm = HFLM(pretrained=str(model), batch_size=ev.tasks_bs, device=str(device),
                      dtype=dtype)
        else:
            # a copy: HFLM gives a tokenizer without one a pad token, and the run saves its own
            lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer),
                      batch_size=ev.tasks_bs)
        out = lm_eval.simple_evaluate(lm, tasks=list(tasks.values()),
                                      num_fewshot=ev.num_fewshot, limit=ev.limit,
                                      task_manager=tasks.manager, log_samples=False)
    metrics = {}
    for task, values in out["results"].items():
        if task not in tasks:
            continue  # a group's aggregate: its tasks are reported one by one
        kept = {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, kind = key.split(",", 1)
            kept[metric if kind == METRIC_FILTER else key] = float(value)
        metrics[task] = kept
    return metrics
