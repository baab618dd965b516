"""Every shipped config loads: the built-in ones as they are, the paper ones once their
placeholder paths (/path/to/...) point at something that exists. So configs/ stays true to the
schema, and each file runs the method its name says."""
from pathlib import Path

import pytest

from llmc.config import load_config as load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yml"))


def _filled_in(text, tmp_path):
    """An override for each `path: /path/to/...` of model, calib and eval: an empty file for
    calib, a directory (with wikitext2/ ptb/ c4/ inside) for the others."""
    overrides, section = [], None
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.split(":")[0]
        key, _, value = line.strip().partition(":")
        if key != "path" or not value.strip().startswith("/path/to"):
            continue
        target = tmp_path / section
        if section == "calib":
            target.mkdir(parents=True)
            target = target / "data.json.gz"
            target.write_bytes(b"")
        else:
            for sub in ("wikitext2", "ptb", "c4"):
                (target / sub).mkdir(parents=True)
        overrides.append(f"{section}.path={target}")
    return overrides


def test_the_paper_configs_are_found():
    assert "sparse/mixgpt.yml" in FILES and "sparse/baichuan_7b/mixgpt.yml" in FILES


@pytest.mark.parametrize("name", FILES)
def test_config_loads(name, tmp_path):
    text = (CONFIGS / name).read_text()
    overrides = _filled_in(text, tmp_path) + [f"save.save_path={tmp_path / 'save'}"]
    cfg = load(str(CONFIGS / name), overrides)
    # named after its method, a step it adds (dsnot.yml: Wanda refined by DSnoT) or its
    # structured method (structured/shortgpt.yml)
    names = [cfg.sparse.structure, cfg.sparse.method, cfg.sparse.refine, cfg.sparse.update]
    assert any(n and n.lower() in Path(name).stem.lower() for n in names)
    assert ("/path/to" in text) == (not cfg.model.path.startswith("builtin:"))
