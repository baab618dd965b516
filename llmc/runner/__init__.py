"""Blockwise calibration: input capture, statistics hooks, the block loop."""
from .blockwise import Calibration, measure_blockwise, prune_blockwise  # noqa: F401
from .capture import capture_block_inputs  # noqa: F401
from .device import resolve_device  # noqa: F401
