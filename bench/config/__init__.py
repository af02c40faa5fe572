"""Typed experiment configuration: defaults <- YAML file <- command-line `key.sub=value` overrides.

Every field that changes a reported number lives outside `runtime`; the run directory name hashes
everything except `runtime` and `wandb` (threads, progress bars, checkpoint cadence), so the same experiment
always lands in the same directory and a second `ltbench run` resumes it.

  schema.py     the typed sections, their defaults and docs, the run hash, `--describe`
  build.py      plain dicts -> typed configs, field by field, with one-line errors; overrides
  protocols.py  what the clean / wb-reference / hs-reference protocols fix, and the reference input statistics
  defaults.py   dataset-card defaults, path expansion, checks across fields, the shard manifest's digest
  load.py       YAML files with `base:`, the parent run's lineage (stage 2 / post-hoc), shipped config names
"""

from bench.config.build import parse_override
from bench.config.defaults import from_dict, resolve
from bench.config.load import (INHERITED, LOCATION_KEYS, find_config, load_config, load_parent, load_with_bases,
                               load_yaml, parent_path)
from bench.config.protocols import FILE_SPLIT_SOURCES, PROTOCOLS, REFERENCE_STATS, apply_protocol
from bench.config.schema import (HASH_NEUTRAL_AT_DEFAULT, Config, ConfigError, DataConfig, EvalConfig, GroupsConfig,
                                 LossConfig, ModelConfig, PeftConfig, PosthocConfig, RuntimeConfig, Stage2Config,
                                 SyntheticConfig, TrainConfig, WandbConfig, ZeroShotConfig, describe_fields, dump_yaml)

__all__ = ["Config", "ConfigError", "DataConfig", "EvalConfig", "FILE_SPLIT_SOURCES", "GroupsConfig",
           "HASH_NEUTRAL_AT_DEFAULT", "INHERITED", "LOCATION_KEYS", "LossConfig", "ModelConfig", "PROTOCOLS",
           "PeftConfig", "PosthocConfig", "REFERENCE_STATS", "RuntimeConfig", "Stage2Config", "SyntheticConfig", "TrainConfig",
           "WandbConfig", "ZeroShotConfig", "apply_protocol", "describe_fields", "dump_yaml", "find_config", "from_dict",
           "load_config", "load_parent", "load_with_bases", "load_yaml", "parent_path", "parse_override", "resolve"]
