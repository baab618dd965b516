"""The argument parser of a subcommand (`llmc report`, `llmc bench-model`): its errors are the
usage, then one `llmc: error: <name>: ...` line, as for every other failure (exit 2)."""
import argparse
import sys


class SubcommandParser(argparse.ArgumentParser):
    def __init__(self, name: str, **kwargs):
        super().__init__(prog=f"llmc {name}", **kwargs)
        self.name = name

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"llmc: error: {self.name}: {message}\n")
