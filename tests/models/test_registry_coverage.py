"""The tests' architecture table (conftest.TINY_ARCHS) follows the MODELS registry: every adapter
has a tiny variant, every model_type an adapter lists is built by one (or is named in
conftest.UNTESTED_MODEL_TYPES with the reason), each variant really is what its row says, and
docs/models.md's table lists exactly the registered adapters and their model_types."""
import re
from pathlib import Path

import pytest

from conftest import (ARCHS, ONE_PER_ADAPTER, TINY_ARCHS, UNTESTED_MODEL_TYPES, arch_adapter,
                      arch_config, arch_model)
from llmc.registry import MODELS

MODELS_DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_every_adapter_has_a_tiny_variant_and_every_variant_a_registered_adapter():
    adapters = {row.adapter for row in TINY_ARCHS.values()}
    assert sorted(adapters) == sorted(MODELS)
    assert sorted(TINY_ARCHS[arch].adapter for arch in ONE_PER_ADAPTER) == sorted(MODELS)


def test_every_listed_model_type_is_built_or_says_why_not():
    listed = {(name, model_type) for name, adapter in MODELS.items()
              for model_type in adapter.model_types}
    built = {(row.adapter, row.model_type) for row in TINY_ARCHS.values()}
    assert built <= listed, "a variant's model_type is not one its adapter lists"
    untested = {(name, model_type) for name, model_type in listed
                if model_type in UNTESTED_MODEL_TYPES}
    assert listed - built == untested, ("model_types listed by an adapter that no tiny variant "
                                        "builds: add a variant, or say why in "
                                        "UNTESTED_MODEL_TYPES")
    assert not untested & built, "UNTESTED_MODEL_TYPES names a model_type a variant builds"
    assert set(UNTESTED_MODEL_TYPES) <= {model_type for _, model_type in listed}
    assert all(reason.strip() for reason in UNTESTED_MODEL_TYPES.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_each_variant_is_what_its_row_says(arch):
    """The built config has the row's model_type, and the row's adapter covers every Linear of
    the built model's blocks."""
    assert arch_config(arch).model_type == TINY_ARCHS[arch].model_type
    arch_adapter(arch).check(arch_model(arch))


@pytest.mark.parametrize("unknown", ["baichuan", "Llama", "gpt2"])
def test_an_unknown_variant_is_a_clear_error(unknown):
    with pytest.raises(ValueError, match=rf"unknown tiny architecture '{unknown}'; known: "
                                         r"llama, .*baichuan2_7b"):
        arch_config(unknown)
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        arch_model(unknown)


def _doc_table():
    """{model.type: [model_type, ...]} from docs/models.md's table of supported models: its
    first column is the model.type, the last parenthesised `...` list of the second column the
    checkpoints' model_types."""
    lines = MODELS_DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| `model.type` |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = re.fullmatch(r"`([^`]+)`", cells[0]).group(1)
        groups = [g for g in re.findall(r"\(([^()]*)\)", cells[1]) if "`" in g]
        rows[name] = re.findall(r"`([^`]+)`", groups[-1])
    return rows


def test_docs_models_table_lists_the_registered_adapters_and_their_model_types():
    table = _doc_table()
    assert sorted(table) == sorted(MODELS)
    for name, model_types in table.items():
        assert tuple(model_types) == MODELS[name].model_types, name
