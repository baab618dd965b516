"""Run llmc configs one after another in the processes torchrun started (one start-up of torch
for many runs, as tests/test_torchrun.py needs); exit with the first non-zero code.

    torchrun --standalone --nproc_per_node 2 tests/torchrun_runs.py a.yml b.yml ...
"""
import sys

import torch

from llmc.cli import main

if __name__ == "__main__":
    torch.set_num_threads(1)
    for config in sys.argv[1:]:
        code = main(["--config", config])
        if code:
            sys.exit(code)
