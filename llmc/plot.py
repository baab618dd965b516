"""A picture of a per-unit plan: sparsity per layer (or Linear) as bars, with the score it was
allocated from (OWL's outlier ratio, MixGPT's sensitivity) beside it. Needs matplotlib, which is
optional: without it the run just logs that no plot was written."""
from pathlib import Path

from loguru import logger

from .faults import pause_point


def plot_plan(plan: dict, path) -> bool:
    """Write `plan` (a UnitPlan description) to `path` (PNG); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed, so no plan plot (pip install matplotlib)")
        return False
    units, sparsity, score = plan["units"], plan["sparsity"], plan["score"]
    positions = range(len(units))
    width = 0.4
    fig, left = plt.subplots(figsize=(max(6.0, 0.3 * len(units)), 4.0))
    left.bar([p - width / 2 for p in positions], sparsity, width, color="tab:blue",
             label="sparsity")
    left.set_ylabel("sparsity")
    left.set_xlabel(plan.get("granularity", "unit"))
    left.set_xticks(list(positions))
    left.set_xticklabels(units, rotation=90, fontsize=6)
    right = left.twinx()
    right.bar([p + width / 2 for p in positions], score, width, color="tab:orange",
              label=plan["score_name"])
    right.set_ylabel(plan["score_name"])
    fig.suptitle(f"{plan['kind']}: mean sparsity {plan['mean_sparsity']:.4f}", x=0.02, ha="left")
    fig.legend(loc="upper right", ncol=2)
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # leave the top strip to the title and legend
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    pause_point("save:plan-written")
    return True
