"""The accuracy tasks of `eval.tasks`, measured at each eval position after perplexity: `cloze`
(llmc's own, on the built-in corpus: llmc.eval.cloze) and lm-evaluation-harness tasks
(llmc.eval.harness). Both are prepared, data included, before the model is loaded."""
from loguru import logger

from ..data.builtin_corpus import builtin_split
from ..distributed import World
from . import harness
from .cloze import cloze_accuracy, cloze_items

CLOZE = "cloze"


class TaskSuite:
    def __init__(self, ev, tokenizer, world=World()):
        self.ev, self.tokenizer = ev, tokenizer
        self.cloze = None
        if CLOZE in ev.tasks:
            self.cloze = cloze_items(builtin_split("eval")["text"], tokenizer,
                                     ev.cloze_paragraphs, ev.seq_len)
        names = [name for name in ev.tasks if name != CLOZE]
        # lm-eval runs in one process (llmc.config.checks refuses its tasks under torchrun)
        self.harness = harness.load_tasks(names) if names and world.leads else {}

    def __bool__(self):
        return self.cloze is not None or bool(self.harness)

    def run_cloze(self, handle, device, world=World()) -> dict:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0  # padding after an item is never read
        return cloze_accuracy(handle, self.cloze, device, self.ev.bs * self.ev.seq_len, pad_id,
                              world)

    def run_harness(self, model, device, dtype="auto") -> dict:
        """lm-eval's metrics of `model`: the model in memory, or a model directory (read as the
        run holds its weights: `dtype`)."""
        if not isinstance(model, str):
            return harness.evaluate_tasks(self.harness, model, self.tokenizer, self.ev, device)
        logger.info(f"lm-eval loads the model from {model}")
        return harness.evaluate_tasks(self.harness, model, None, self.ev, device, dtype)


def task_line(task: str, metrics: dict) -> str:
    """`task: acc 0.4280 ± 0.0221, ...` for the log."""
    shown = []
    for metric, value in metrics.items():
        if metric.endswith("_stderr") or metric == "paragraphs":
            continue
        stderr = metrics.get(f"{metric}_stderr")
        shown.append(f"{metric} {value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else ""))
    return f"{task}: {', '.join(shown)}"
