"""A study config: its fields, their validation, and its expansion into groups.

Every config field is static, dynamic or run (icsjax.fields). The core fields
are listed here; each record kind adds its own (icsjax.records).

``config.sweep`` maps field names to tuples of values. The grid is the
product of every swept field and the seed indices; models are ordered group
by group, then by swept dynamic values, with the seed index varying fastest.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import ml_collections

from icsjax import data as data_lib
from icsjax import fields as f
from icsjax import records as records_lib
from icsjax.data import DATASETS, IMAGE_DATASETS
from icsjax.fields import ConfigError, Field, fail  # noqa: F401  (ConfigError: the API)
from icsjax.models import ACTIVATIONS, ARCHS, INITS
from icsjax.norms import BATCH_NORM_KINDS, NORM_KINDS
from icsjax.optim import OPTIMIZERS
from icsjax.spec import RunSpec

CORE_FIELDS: dict[str, Field] = {
    # data
    "dataset": Field("static", f.choice(DATASETS), "training data"),
    "data_seed": Field("static", f.integer(0, 2**32 - 1), "seed of the train/test split and of synthetic data"),
    "test_fraction": Field("static", f.number(0, 1, lo_open=True, hi_open=True), "digits: share held out for test"),
    "regression_dim": Field("static", f.integer(1), "gaussian_regression: input and output dimension"),
    "regression_train_size": Field("static", f.integer(2), "gaussian_regression: training examples"),
    "regression_test_size": Field("static", f.integer(1), "gaussian_regression: test examples"),
    "monitor_size": Field("static", f.integer(1), "fixed training examples for percentile records"),
    "tfds_data_dir": Field("static", f.string, "TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)"),
    # model
    "arch": Field("static", f.choice(ARCHS), "mlp (Ioffe), dln (deep linear network) or vgg (CNN)"),
    "width": Field("static", f.integer(1), "units per hidden dense layer"),
    "depth": Field("static", f.integer(1), "hidden dense (normalised) layers; one output layer follows"),
    "channels": Field("static", f.positive_int_tuple, "vgg: channels of each conv stage"),
    "convs_per_stage": Field("static", f.integer(1), "vgg: 3x3 conv layers per stage (then 2x2 pooling)"),
    "activation": Field("static", f.choice(ACTIVATIONS), "nonlinearity (dln: identity)"),
    "init": Field("static", f.choice(INITS), "kernel initialiser of every dense and conv layer"),
    "norm": Field("static", f.choice(NORM_KINDS), "normalisation before each nonlinearity"),
    "norm_eps": Field("static", f.number(0, lo_open=True), "epsilon of every norm"),
    "lp_center": Field("static", f.boolean, "lp batch norm subtracts the batch mean first"),
    "batch_size": Field("static", f.integer(1), "training minibatch size"),
    "optimizer": Field("static", f.choice(OPTIMIZERS), "sgd, momentum (heavy ball) or adam"),
    # per-model hyperparameters
    "lr": Field("dynamic", f.number(0, lo_open=True), "learning rate"),
    "init_gain": Field("dynamic", f.number(0, lo_open=True),
                       "every initial dense and conv kernel (the output's too) times this"),
    "momentum": Field("dynamic", f.number(0, 1, hi_open=True), "momentum optimizer: momentum"),
    "b1": Field("dynamic", f.number(0, 1, hi_open=True), "adam: first-moment decay"),
    "b2": Field("dynamic", f.number(0, 1, hi_open=True), "adam: second-moment decay"),
    "adam_eps": Field("dynamic", f.number(0, lo_open=True), "adam: epsilon"),
    "bn_momentum": Field("dynamic", f.number(0, 1, hi_open=True), "decay of the running statistics (Flax convention)"),
    "noise_mean_range": Field("dynamic", f.number(0), "noisy BN: mu^t ~ U(-r, r)"),
    "noise_scale_low": Field("dynamic", f.number(), "noisy BN: sigma^t ~ U(low, high)"),
    "noise_scale_high": Field("dynamic", f.number(), "noisy BN: sigma^t ~ U(low, high)"),
    "noise_mean_spread": Field("dynamic", f.number(0), "noisy BN: m ~ U(mu^t - d, mu^t + d)"),
    "noise_scale_std": Field("dynamic", f.number(0), "noisy BN: s ~ N(sigma^t, std^2)"),
    # the loop
    "seeds": Field("run", f.integer(1), "number of seed indices (0..seeds-1)"),
    "base_seed": Field("run", f.integer(0, 2**32 - 1), "root of every random key"),
    "steps": Field("run", f.integer(1), "training steps"),
    "scan_length": Field("run", f.integer(1), "steps per inner compiled scan"),
    "segment_steps": Field("run", f.integer(1), "steps per compiled call; records are written per segment"),
    "eval_batch_chunk": Field("run", f.integer(1), "test batches evaluated at once (memory bound)"),
    "checkpoint_segments": Field("run", f.integer(0), "checkpoint the training state after every "
                                 "this many segments, and after the last (0: never, and a "
                                 "rerun starts over)"),
    "checkpoint_keep": Field("run", f.integer(0), "newest checkpoints kept (0: all)"),
    "preemption_budget_seconds": Field("run", f.number(0), "on SIGTERM (a preemption "
                                       "notice), finish the segment in flight and checkpoint "
                                       "it only if that is expected to end within this many "
                                       "seconds, else exit at once keeping the last intact "
                                       "checkpoint (icsjax/preemption.py)"),
    "programs": Field("run", f.choice(("auto", "separate", "padded")),
                      "groups of one family (differing only in width or depth) in one "
                      "padded compiled program ('padded'), one program per group "
                      "('separate'), or whichever the cost model expects to be faster "
                      "('auto'; icsjax/programs.py)"),
    "cpu_devices": Field("run", f.integer(0), "CPU only: split the host into this many XLA devices "
                         "and shard the model axis over them (0: one per core; 1: no split)"),
}
FIELDS: dict[str, Field] = {**CORE_FIELDS, **records_lib.fields()}
DYNAMIC_FIELDS = tuple(k for k, v in FIELDS.items() if v.role == "dynamic")
STATIC_FIELDS = tuple(k for k, v in FIELDS.items() if v.role == "static")
RUN_FIELDS = tuple(k for k, v in FIELDS.items() if v.role == "run")
SWEEP_KEY = "sweep"


@dataclasses.dataclass(frozen=True)
class Group:
  """One compiled group: fixed static values and a flat, labelled model axis."""
  name: str
  static: dict[str, Any]          # every static field's value in this group
  model_ids: tuple[int, ...]      # global model indices
  coords: dict[str, tuple]        # per-model labels: variant, seed, swept fields
  hparams: dict[str, tuple]       # per-model value of every dynamic field

  @property
  def size(self) -> int:
    return len(self.model_ids)

  @property
  def variant(self) -> str:
    return self.static["norm"]


@dataclasses.dataclass(frozen=True)
class Study:
  config: ml_collections.ConfigDict
  groups: tuple[Group, ...]

  @property
  def num_models(self) -> int:
    return sum(g.size for g in self.groups)

  @property
  def num_segments(self) -> int:
    return self.config.steps // self.config.segment_steps


def _check_value(field: str, value: Any, where: str):
  phrase = FIELDS[field].check(value)
  if phrase is not None:
    raise fail(where, value, phrase)


def _sweep_items(config) -> dict[str, tuple]:
  sweep = config.get(SWEEP_KEY) or {}
  if not isinstance(sweep, (dict, ml_collections.ConfigDict)):
    raise fail(SWEEP_KEY, sweep, "must map field names to tuples of values, "
               "e.g. sweep.lr=(0.1, 0.5)")
  items = {}
  for name, values in dict(sweep).items():
    where = f"{SWEEP_KEY}.{name}"
    if name not in FIELDS:
      raise ConfigError(f"config.{where} is not a config field; sweepable fields: "
                        f"{', '.join(STATIC_FIELDS + DYNAMIC_FIELDS)}")
    if FIELDS[name].role == "run":
      raise ConfigError(f"config.{where} cannot be swept: {name} shapes the loop "
                        f"itself; sweepable fields: {', '.join(STATIC_FIELDS + DYNAMIC_FIELDS)}")
    if not isinstance(values, (tuple, list)) or not values:
      raise fail(where, values, "must be a non-empty tuple of values")
    for v in values:
      _check_value(name, v, where)
    if len(set(values)) != len(values):
      raise fail(where, values, "must not repeat a value")
    items[name] = tuple(values)
  return items


def _check_cadences(c):
  n = c.scan_length
  on = [k for k in records_lib.KINDS if c[k.cadence]]
  cadences = tuple(k.cadence for k in on)
  for k in on:
    if c[k.cadence] % n:
      raise fail(k.cadence, c[k.cadence], f"must be a multiple of scan_length={n}"
                 + (" (or 0: off)" if k.optional else ""))
  for name in cadences:
    if c.segment_steps % c[name]:
      raise fail("segment_steps", c.segment_steps,
                  f"must be a multiple of {name}={c[name]} (and of every cadence that is on: "
                  f"{', '.join(cadences)})")
  if c.steps % c.segment_steps:
    raise fail("steps", c.steps, f"must be a multiple of segment_steps={c.segment_steps}")


def _check_group(static: dict, config, label: str):
  """Checks that need several static values together (the data sizes too)."""
  where = f" (in group {label})" if label else ""
  if static["arch"] == "dln" and static["activation"] != "identity":
    raise ConfigError(f"config.activation={static['activation']!r} must be 'identity' "
                      f"when arch='dln' (a deep linear network){where}")
  n_train, n_test = data_lib.split_sizes(static)
  if static["batch_size"] > n_train:
    raise fail("batch_size", static["batch_size"],
               f"must be <= {n_train}, the training set size of {static['dataset']}{where}")
  if static["batch_size"] > n_test:
    raise fail("batch_size", static["batch_size"],
               f"must be <= {n_test}, the test set size of {static['dataset']} "
               f"(train-mode evaluation uses test batches of the training batch size){where}")
  if static["norm"] in BATCH_NORM_KINDS and static["batch_size"] < 2:
    raise fail("batch_size", static["batch_size"],
               f"must be >= 2 for norm={static['norm']!r}: batch statistics of one "
               f"example are undefined{where}")
  if config.steps * static["batch_size"] >= 2**31:
    raise fail("steps", config.steps, f"times batch_size={static['batch_size']} must be "
               f"< 2**31 (minibatch positions are int32){where}")
  if static["monitor_size"] > n_train:
    raise fail("monitor_size", static["monitor_size"],
               f"must be <= {n_train}, the training set size{where}")
  if static["arch"] == "vgg" and static["dataset"] not in IMAGE_DATASETS:
    raise ConfigError(f"config.dataset={static['dataset']!r} must be one of "
                      f"{', '.join(IMAGE_DATASETS)} when arch='vgg' (a CNN needs images){where}")
  sizes = {"train": n_train, "test": n_test}
  for kind in records_lib.KINDS:
    if kind.check is not None and config[kind.cadence]:
      kind.check(static, config, sizes, where)


def validate(config) -> dict[str, tuple]:
  """Checks every field; returns the sweep. Raises ConfigError naming the field."""
  keys = set(config.keys())
  unknown = sorted(keys - set(FIELDS) - {SWEEP_KEY})
  if unknown:
    raise ConfigError(f"config.{unknown[0]} is not a known field; known fields: "
                      f"{', '.join(sorted(FIELDS))}")
  missing = sorted(set(FIELDS) - keys)
  if missing:
    raise ConfigError(f"config.{missing[0]} is missing; start from configs/default.py")
  for name in FIELDS:
    _check_value(name, config[name], name)
  sweep = _sweep_items(config)
  _check_cadences(config)
  lows = sweep.get("noise_scale_low", (config.noise_scale_low,))
  highs = sweep.get("noise_scale_high", (config.noise_scale_high,))
  if max(lows) > min(highs):
    raise fail("noise_scale_low", max(lows), f"must be <= noise_scale_high={min(highs)}")
  for static in _static_combinations(config, sweep):
    _check_group(static, config, _group_name(static, sweep))
  return sweep


def _static_combinations(config, sweep):
  names = [k for k in STATIC_FIELDS if k in sweep]
  for values in itertools.product(*(sweep[k] for k in names)):
    static = {k: config[k] for k in STATIC_FIELDS}
    static.update(zip(names, values))
    yield static


def _group_name(static: dict, sweep: dict) -> str:
  parts = [f"{k}-{static[k]}" for k in STATIC_FIELDS if k in sweep]
  return "_".join(parts) if parts else "main"


def expand(config) -> Study:
  """Validates `config` and expands it into compiled groups of labelled models."""
  sweep = validate(config)
  dyn_names = [k for k in DYNAMIC_FIELDS if k in sweep]
  static_swept = [k for k in STATIC_FIELDS if k in sweep]
  groups, next_id = [], 0
  for static in _static_combinations(config, sweep):
    rows = [(dict(zip(dyn_names, values)), seed)
            for values in itertools.product(*(sweep[k] for k in dyn_names))
            for seed in range(config.seeds)]
    coords = {"variant": tuple(static["norm"] for _ in rows),
              "seed": tuple(seed for _, seed in rows)}
    for k in static_swept:
      if k != "norm":
        coords[k] = tuple(static[k] for _ in rows)
    for k in dyn_names:
      coords[k] = tuple(values[k] for values, _ in rows)
    hparams = {k: tuple(values.get(k, config[k]) for values, _ in rows)
               for k in DYNAMIC_FIELDS}
    ids = tuple(range(next_id, next_id + len(rows)))
    next_id += len(rows)
    groups.append(Group(_group_name(static, sweep), static, ids, coords, hparams))
  return Study(config, tuple(groups))


def run_spec(config) -> RunSpec:
  """The run-role values of a config, which every group of it shares."""
  return RunSpec({k: config[k] for k in RUN_FIELDS})
