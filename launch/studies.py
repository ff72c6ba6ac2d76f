"""A study to launch: its config with the command line's overrides, validated as
``icsjax.main`` validates it, its groups, its name and the data it reads.

The study's name is its bucket folder and its jobs' names; the rule makes
resubmitting the same study resume it: the config file's stem, plus, when
the config takes a ``:argument`` or overrides are given, ``-`` and the first
8 hex digits of the SHA-256 of ``[argument, [field, value] of the last
override of each field, sorted by field]`` as JSON, the values as typed.
``configs/default.py`` is ``default``; with ``--override width=256``,
``default-`` and a hash that ``width=256`` alone gives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

from absl import flags
from ml_collections import config_flags

from icsjax import config_files
from icsjax import study as study_lib
from icsjax import tfds_data
from icsjax.fields import ConfigError
from launch import LaunchError

ROOT = pathlib.Path(__file__).resolve().parent.parent  # the checkout SkyPilot uploads


@dataclasses.dataclass(frozen=True)
class LaunchedStudy:
  name: str
  config_arg: str  # as the run command passes it: relative to the checkout, :argument kept
  overrides: tuple[tuple[str, str], ...]  # (field path, value text), the last of each field
  study: study_lib.Study


def parse_override(text: str) -> tuple[str, str]:
  field, eq, value = text.partition("=")
  if not eq or not field or field.startswith("-"):
    raise LaunchError(f"--override {text!r} must be FIELD=VALUE, e.g. --override width=256 "
                      f"or --override 'sweep.lr=(0.05,0.1)'")
  return field, value


def last_of_each(overrides) -> tuple[tuple[str, str], ...]:
  last = {}
  for field, value in overrides:
    last.pop(field, None)  # a field given again moves to its last place
    last[field] = value
  return tuple(last.items())


def config_flag_args(overrides) -> list[str]:
  return [f"--config.{field}={value}" for field, value in overrides]


def in_checkout(config_arg: str) -> str:
  """The config argument relative to the checkout's root, which is where the run
  command runs on the VM; LaunchError for a config the checkout does not hold."""
  try:
    resolved = config_files.resolve(config_arg)
  except config_files.CommandLineError as e:
    raise LaunchError(str(e)) from e
  path, colon, suffix = resolved.partition(":")
  absolute = pathlib.Path(path).resolve()
  if not absolute.is_relative_to(ROOT):
    raise LaunchError(f"config {path!r} is outside the checkout {ROOT}, which is what "
                      f"reaches the VM; put it under {ROOT / 'configs'}")
  return absolute.relative_to(ROOT).as_posix() + colon + suffix


def load(config_arg: str, overrides) -> LaunchedStudy:
  """The study `config_arg` with `overrides` ((field, value text) pairs) gives,
  loaded and validated as ``python -m icsjax.main`` does it; LaunchError
  (one line) for anything that run would refuse."""
  arg = in_checkout(config_arg)
  overrides = last_of_each(overrides)
  argv = ["icsjax.main", f"--config={ROOT / arg}", *config_flag_args(overrides)]
  try:
    argv, sweeps = config_files.split_sweeps(argv)
    config = config_files.load(str(ROOT / arg))
    config_files.check_overrides(argv, config)
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "study config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    values(argv)
    config = values.config
    config_files.add_sweeps(config, sweeps)
    study = study_lib.expand(config)
  except (ConfigError, config_files.CommandLineError, flags.Error) as e:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    first = first.replace("--config.", "--override ")  # as the user typed it
    raise LaunchError(f"{arg}: {first}") from e
  return LaunchedStudy(study_name(arg, overrides), arg, overrides, study)


def study_name(config_arg: str, overrides) -> str:
  path, _, argument = config_arg.partition(":")
  stem = pathlib.PurePosixPath(path).stem
  if not argument and not overrides:
    return stem
  key = json.dumps([argument, sorted([f, v] for f, v in overrides)])
  return f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def tfds_names(study: study_lib.Study, groups) -> list[str]:
  """The TFDS dataset folders the named groups of `study` read (dataset, or
  dataset/config for cifar10_corrupted's), sorted: what a job copies to the VM."""
  c = study.config
  names = set()
  for g in study.groups:
    dataset = g.static["dataset"]
    if g.name not in groups or dataset not in tfds_data.TFDS_DATASETS:
      continue
    names.add(dataset)
    if c.test_time_every and dataset in tfds_data.CORRUPTED_DATASETS:
      names.update(f"{tfds_data.CORRUPTED_DATASETS[dataset]}/{corruption}_{severity}"
                   for corruption in c.tfds_corruptions for severity in c.shift_severities)
  return sorted(names)


def check_local_data_dir(launched: LaunchedStudy):
  """The job puts the data on the VM's disk and points $TFDS_DATA_DIR there,
  which a config's own tfds_data_dir would override."""
  uses_tfds = any(g.static["dataset"] in tfds_data.TFDS_DATASETS for g in launched.study.groups)
  if uses_tfds and launched.study.config.tfds_data_dir:
    raise LaunchError(f"{launched.config_arg}: config.tfds_data_dir="
                      f"{launched.study.config.tfds_data_dir!r} must be '' on a TPU VM: the job "
                      f"copies the data to the VM's disk and sets ${tfds_data.ENV_DATA_DIR}")

