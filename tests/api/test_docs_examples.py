"""docs/api.md's three examples, run as written, each as a new Python process in an empty
directory (with configs/ beside it, as in a checkout) on the built-in real model: what a new user
would copy. Their sizes keep the three within about two minutes on 2 cores."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)


def test_docs_has_three_examples():
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("index, expected", [
    (0, r"Magnitude: ppl (\d+\.\d+) -> \d+\.\d+, sparsity 0\.50\d\n.*lowest perplexity at 50%"),
    (1, r"2:4 sparsity after stage 2: 0\.500, 0\.500"),
    (2, r"wanda-0\.3.*\n.*wanda-0\.5.*\n.*wanda-0\.7"),
])
def test_the_example_runs_as_written(index, expected, tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    script = tmp_path / "example.py"
    script.write_text(EXAMPLES[index])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(expected, done.stdout, re.S), done.stdout
    assert "Traceback" not in done.stderr
