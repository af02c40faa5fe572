"""Experiments as runs see them: a config read by bench.config, then resolved against what lies outside it
(its dataset card, the model's preprocessing, the shard manifest, its parent run). The config package is the
floor and imports none of that; this layer sits above data and models.

  load.py      load_config (file <- overrides <- protocol <- parent lineage <- resolution), load_parent
  resolve.py   card defaults, model preprocessing, the shard manifest's digest, checks across fields
"""

from bench.experiment.load import load_config, load_parent
from bench.experiment.resolve import resolve

__all__ = ["load_config", "load_parent", "resolve"]
