"""A save path (and a config path) outside ASCII works whatever the locale: under LC_ALL=C too,
in a real process (the locale decides how Python encodes file names and opens text)."""
import os
import subprocess
import sys

import pytest

from saved_run import FAST, committed


@pytest.mark.parametrize("locale,utf8,name", [
    ("C", None, "sävé 路径"),            # Python's UTF-8 mode (on by default under C)
    ("C", "0", "sävé 路径"),             # without it: argv's bytes come as surrogate escapes
    ("C", None, b"latin1-\xe9t\xe9"),   # not UTF-8 at all
])
def test_a_non_ascii_save_path_works_under_any_locale(run_config, tmp_path, locale, utf8, name):
    save = os.fsencode(tmp_path) + b"/" + (name if isinstance(name, bytes) else name.encode())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8"))}
    env.update(LC_ALL=locale, OMP_NUM_THREADS="1", **({"PYTHONUTF8": utf8} if utf8 else {}))
    done = subprocess.run([sys.executable.encode(), b"-m", b"llmc", b"--config",
                           os.fsencode(run_config), *(a.encode() for a in FAST),
                           b"--set", b"save.save_path=" + save], env=env, capture_output=True,
                          timeout=300)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, stderr[-2000:]
    assert "llmc: error" not in stderr
    moved = tmp_path / "moved"  # the safetensors reader takes only UTF-8 paths; the layout's
    os.rename(save, moved)      # links are relative, so the moved save path reads the same
    committed(moved)
