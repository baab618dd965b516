"""The suite runs in the pinned test environment (constraints.txt, or the file named by
LLMC_CONSTRAINTS, as .ci/run's transformers 4.x step does): a package at another version than
its pin fails here by name, instead of somewhere else as a confusing failure (a new pytest once
broke pytest.approx on tensors, and a green CI on an old one hid it)."""
import os
import re
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
# what the suite itself imports (its own files and llmc's), each of which must be pinned
IMPORTED = ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "datasets",
            "accelerate", "numpy", "pyyaml", "loguru", "tqdm", "psutil", "gguf", "zstandard",
            "pyarrow", "pytest", "scipy", "matplotlib", "lm-eval")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def public(version: str) -> str:
    """2.13.0+cpu -> 2.13.0: a pin without a local label accepts every build of the release."""
    return version.split("+", 1)[0]


def constraints_file() -> Path:
    return Path(os.environ.get("LLMC_CONSTRAINTS") or ROOT / "constraints.txt")


def read_pins(path: Path) -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def installed() -> dict:
    return {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
            if dist.metadata["Name"]}


def test_pins_are_read_as_pip_reads_them(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# comment\nPyYAML==6.0.4\ntyping_extensions==4.16.0\ntorch==2.13.0\n")
    assert read_pins(path) == {"pyyaml": "6.0.4", "typing-extensions": "4.16.0",
                               "torch": "2.13.0"}
    assert public("2.13.0+cpu") == "2.13.0" and public("1.0") == "1.0"


def test_every_imported_package_is_pinned():
    pins = read_pins(constraints_file())
    assert not [name for name in IMPORTED if name not in pins], constraints_file()


def test_installed_packages_are_at_their_pinned_versions():
    path = constraints_file()
    pins, have = read_pins(path), installed()
    missing = [name for name in IMPORTED if name not in have]
    drifted = [f"{name} {have[name]} (pinned {pin})" for name, pin in sorted(pins.items())
               if name in have and public(have[name]) != pin]
    if missing or drifted:
        pytest.fail(f"the test environment is not the pinned one ({path}): "
                    f"{'; '.join(drifted + [f'{n} not installed' for n in missing])}. "
                    f"Install it as the README says: pip install -e \".[test,eval]\" -c {path.name}")
