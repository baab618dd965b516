"""What llmc.prune and llmc.run give back: the model and the run's record (what results.json
holds), with the record's main parts as attributes."""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn as nn


@dataclass
class Result:
    """One finished run.

    `model`: llmc.prune's model, pruned in place (the object it was given, or the one it loaded
    from a path); None from llmc.run, whose model is the saved one (`saved_model`).
    `record`: what results.json holds (docs/outputs.md), also when nothing was written.
    `column_orders`: {Linear path: column order} where RIA's reallocation permuted a Linear's
    columns for its N:M mask (empty otherwise)."""
    model: Optional[nn.Module]
    record: Dict[str, Any]
    column_orders: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def ppl(self) -> Dict[str, Dict[str, float]]:
        """{position ("pretrain", "transformed"): {dataset: perplexity}}; empty without eval."""
        return self.record["ppl"]

    @property
    def tasks(self) -> Dict[str, Dict[str, Any]]:
        """{position: {task: metrics}} of eval.tasks (cloze, lm-eval)."""
        return self.record["tasks"]

    @property
    def sparsity(self) -> Dict[str, Any]:
        """The achieved sparsity: "overall" over all decoder Linears, and per block and Linear."""
        return self.record["sparsity"]

    @property
    def plan(self) -> Dict[str, Any]:
        """The allocation's plan: the target per layer or Linear (OWL, MixGPT) or uniform."""
        return self.record["plan"]

    @property
    def timings(self) -> Dict[str, float]:
        """Seconds per phase (allocate, prune_total, eval_*, total, ...)."""
        return self.record["timings"]

    @property
    def saved_model(self) -> Optional[str]:
        """Where the pruned model was saved (save.save_trans: True), else None."""
        return self.record.get("saved_model")
