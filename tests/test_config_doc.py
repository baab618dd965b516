"""docs/config.md's method settings table is generated from the methods' declarations and is
current."""
from pathlib import Path

from llmc.config.doc import main, regenerate

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_the_config_reference_is_current():
    text = DOC.read_text()
    assert regenerate(text) == text, "run: python -m llmc.config.doc --write docs/config.md"
    assert main(["--check", str(DOC)]) == 0


def test_a_stale_table_is_reported(tmp_path, capsys):
    stale = tmp_path / "config.md"
    stale.write_text(DOC.read_text().replace("| `blocksize` | 128 |", "| `blocksize` | 64 |"))
    assert main(["--check", str(stale)]) == 1
    assert "stale" in capsys.readouterr().err
    assert main(["--write", str(stale)]) == 0
    assert stale.read_text() == DOC.read_text()
