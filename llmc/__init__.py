"""llmc: prune large language models blockwise from a YAML config."""

__version__ = "0.1.0"
