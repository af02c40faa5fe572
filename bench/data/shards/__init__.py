"""Streaming webdataset tar shards written by `ltbench prepare` (a package: see its modules)."""

from bench.data.shards.loader import *  # noqa: F401,F403 - one step of the split; replaced by precise re-exports
from bench.data.shards.loader import (_buffer_shuffle, _load_npy, _rrc_box)  # noqa: F401 - tests import these
