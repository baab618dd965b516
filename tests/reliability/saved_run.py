"""What a reader of a save path sees: the one complete run the top-level names lead to
(docs/outputs.md), shared by the save-path tests."""
import json
import os

import yaml
from safetensors.torch import load_file

FAST = ("--set", "eval.eval_pos=[]")
OWL = ("--set", "sparse.method=OWL", "--set", "sparse.weight.sparsity=0.7",
       "--set", "sparse.owl.lambda=0.1")  # a per-layer plan: writes plan.png
NO_MODEL = ("--set", "save.save_trans=false")
OVERWRITE = ("--set", "save.overwrite=true")
OUTPUT_NAMES = {"results.json", "config.yml", "plan.png", "transformed_model",
                "column_orders.safetensors"}


def seed(n):
    return ("--set", f"base.seed={n}")


def committed(save) -> dict:
    """What a reader following the top-level names sees, asserted to be exactly one complete
    run: results.json of the run `current` names, its config.yml, plan.png and the model (whose
    zeros are that run's) present exactly when that run wrote them. Returns its results."""
    run_id = os.path.basename(os.readlink(save / ".llmc" / "current"))
    results = json.loads((save / "results.json").read_text())
    assert results["run_id"] == run_id
    assert yaml.safe_load((save / "config.yml").read_text()) == results["config"]
    assert (save / "plan.png").exists() == ("plan_plot" in results)
    model = save / "transformed_model"
    assert model.exists() == ("saved_model" in results)
    if model.exists():
        weights = saved_weights(save)
        for name, fraction in results["sparsity"]["per_linear"].items():
            if f"{name}.weight_packed" in weights:  # saved packed (tests/test_packed.py)
                continue
            weight = weights[f"{name}.weight"]
            assert int((weight == 0).sum()) / weight.numel() == fraction, name
        assert json.loads((model / "config.json").read_text())["model_type"] == "llama"
        assert (model / "tokenizer.json").exists()
    return results


def saved_weights(save) -> dict:
    """Every tensor of save/transformed_model: one file, or a streamed run's shards."""
    weights = {}
    for shard in (save / "transformed_model").glob("*.safetensors"):
        weights.update(load_file(shard))
    return weights


def assert_clean(save) -> None:
    """Nothing but the committed run: no lock, no other run directory, no temporaries, every
    top-level output a link that resolves."""
    run_id = os.path.basename(os.readlink(save / ".llmc" / "current"))
    state = sorted(os.listdir(save / ".llmc"))
    # What a streamed run that was interrupted after finishing blocks keeps for a rerun to
    # resume from (docs/outputs.md); the next run that commits on the path removes it.
    if "scratch" in state:
        assert set(os.listdir(save / ".llmc" / "scratch")) <= {"resume", "shards"}
        state.remove("scratch")
    assert state == ["current", "runs"]
    assert os.listdir(save / ".llmc" / "runs") == [run_id]
    top = set(os.listdir(save)) - {".llmc", "sensitivity.json"}
    assert top <= OUTPUT_NAMES, top
    for name in top:
        assert os.readlink(save / name) == f".llmc/current/{name}" and (save / name).exists()
