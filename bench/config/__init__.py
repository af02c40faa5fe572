"""Typed experiment configuration: defaults <- YAML file <- command-line `key.sub=value` overrides.

The floor of the package: it imports nothing of bench but errors, paths and registry (names only). Resolving a
config against its dataset card, model and parent run is bench.experiment's job, one layer up.

Every field that changes a reported number lives outside `runtime`; the run directory name hashes
everything except `runtime` and `wandb` (threads, progress bars, checkpoint cadence), so the same experiment
always lands in the same directory and a second `ltbench run` resumes it.

  schema.py     the typed sections, their defaults and docs, the run hash, `--describe`
  build.py      plain dicts -> typed configs, field by field, with one-line errors; overrides
  protocols.py  what the clean / wb-reference / hs-reference protocols fix, and the reference input statistics
  load.py       YAML files with `base:`, overrides, `$VAR` paths, stored configs, shipped config names
  describe.py   `ltbench config --describe` and docs/config.md, generated from the schema
"""

from bench.config.build import parse_override
from bench.config.load import (INHERITED, LOCATION_KEYS, dump_yaml, expand_path, find_config, load_with_bases,
                               load_yaml, parent_path, read_raw, stored_config)
from bench.config.protocols import PROTOCOLS, REFERENCE_STATS, apply_protocol
from bench.config.describe import describe_fields
from bench.config.schema import (GROUPS, HASH_NEUTRAL_AT_DEFAULT, Config, ConfigError, ContrastConfig, DataConfig,
                                 DistillConfig, EvalConfig, GroupsConfig, LossConfig, ModelConfig, PeftConfig,
                                 PosthocConfig, RuntimeConfig, Stage2Config, SyntheticConfig, TrainConfig, WandbConfig,
                                 ZeroShotConfig)

__all__ = ["GROUPS", "Config", "ConfigError", "ContrastConfig", "DataConfig", "DistillConfig", "EvalConfig",
           "GroupsConfig",
           "HASH_NEUTRAL_AT_DEFAULT", "INHERITED", "LOCATION_KEYS", "LossConfig", "ModelConfig", "PROTOCOLS",
           "PeftConfig", "PosthocConfig",
           "REFERENCE_STATS", "RuntimeConfig", "Stage2Config", "SyntheticConfig", "TrainConfig", "WandbConfig",
           "ZeroShotConfig", "apply_protocol", "describe_fields", "dump_yaml", "expand_path", "find_config",
           "load_with_bases", "load_yaml", "parent_path", "parse_override", "read_raw", "stored_config"]
