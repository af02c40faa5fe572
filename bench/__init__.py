"""ltbench: long-tailed recognition benchmark runner."""

__version__ = "0.1.0"
