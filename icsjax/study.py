"""A study config: its fields, their validation, and its expansion into groups.

Every config field is one of three roles:
- static: changes shapes or code (dataset, architecture, norm kind, ...);
  each combination of swept static values is its own compiled group;
- dynamic: a per-model value inside one compiled group (learning rate,
  optimizer and noise hyperparameters); sweeping it never recompiles;
- run: shapes the loop itself (steps, cadences, seeds) and cannot be swept.

``config.sweep`` maps field names to tuples of values. The grid is the
product of every swept field and the seed indices; models are ordered group
by group, then by swept dynamic values, with the seed index varying fastest.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from typing import Any, Callable

import ml_collections

from icsjax import tfds_data

NORM_KINDS = ("none", "batchnorm", "noisy_batchnorm", "layernorm",
              "l1_batchnorm", "l2_batchnorm", "linf_batchnorm")
BATCH_NORM_KINDS = tuple(k for k in NORM_KINDS if k.endswith("batchnorm"))
DATASETS = ("digits", "gaussian_regression") + tfds_data.TFDS_DATASETS
IMAGE_DATASETS = ("digits",) + tfds_data.TFDS_DATASETS
ARCHS = ("mlp", "dln", "vgg")
ACTIVATIONS = ("sigmoid", "relu", "tanh", "identity")
OPTIMIZERS = ("sgd", "momentum", "adam")
MONITOR_MODES = ("train", "eval")
PROBES = ("ics", "landscape", "curvature")  # icsjax.probes; each has a cadence field


class ConfigError(ValueError):
  """A config that cannot run; the message names the field and what is allowed."""


# --- value checks: each returns an error phrase, or None when the value is fine.

def _choice(options):
  def check(v):
    return None if v in options else f"must be one of {', '.join(options)}"
  return check


def _int(lo=None, hi=None):
  def check(v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
      return "must be an integer"
    if lo is not None and v < lo:
      return f"must be >= {lo}"
    if hi is not None and v > hi:
      return f"must be <= {hi}"
    return None
  return check


def _float(lo=None, hi=None, lo_open=False, hi_open=False):
  def check(v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
      return "must be a number"
    if not math.isfinite(v):
      return "must be finite"
    if lo is not None and (v <= lo if lo_open else v < lo):
      return f"must be {'>' if lo_open else '>='} {lo}"
    if hi is not None and (v >= hi if hi_open else v > hi):
      return f"must be {'<' if hi_open else '<='} {hi}"
    return None
  return check


def _positive_int_tuple(v):
  if not isinstance(v, (tuple, list)) or not v:
    return "must be a non-empty tuple of integers"
  if any(isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 1 for u in v):
    return "must hold positive integers"
  return None


def _positive_float_tuple(v):
  if not isinstance(v, (tuple, list)) or not v:
    return "must be a non-empty tuple of numbers"
  if any(isinstance(u, bool) or not isinstance(u, numbers.Real) or not math.isfinite(u)
         or u <= 0 for u in v):
    return "must hold finite numbers > 0 (eta = 0 is the base point, always included)"
  if len(set(v)) != len(v):
    return "must not repeat a value"
  return None


def _str(v):
  return None if isinstance(v, str) else "must be a string"


def _bool(v):
  return None if isinstance(v, bool) else "must be True or False"


def _int_tuple(v):
  if not isinstance(v, (tuple, list)) or not v:
    return "must be a non-empty tuple of integers"
  if any(isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 0
         for u in v):
    return "must hold non-negative integers"
  if len(set(v)) != len(v):
    return "must not repeat a unit"
  return None


def _distinct_tuple(item_check, item_phrase: str, empty_ok: bool = False):
  """A tuple of distinct values, each passing item_check (a predicate)."""
  def check(v):
    if not isinstance(v, (tuple, list)) or (not v and not empty_ok):
      return f"must be a {'' if empty_ok else 'non-empty '}tuple of {item_phrase}"
    if not all(item_check(u) for u in v):
      return f"must hold {item_phrase}"
    if len(set(v)) != len(v):
      return "must not repeat a value"
    return None
  return check


def _is_positive_int(u):
  return not isinstance(u, bool) and isinstance(u, numbers.Integral) and u >= 1


def _is_severity(u):
  return _is_positive_int(u) and u <= 5


def _is_prior(u):
  return (not isinstance(u, bool) and isinstance(u, numbers.Real) and math.isfinite(u)
          and u >= 0)


def _corruptions(v):
  from icsjax import shifts  # imports jax: only when a config is checked
  return _distinct_tuple(lambda u: u in shifts.CORRUPTIONS,
                         f"names among {', '.join(shifts.CORRUPTIONS)}", empty_ok=True)(v)


ADAPT_SETS = ("test_batch", "separate")


@dataclasses.dataclass(frozen=True)
class Field:
  role: str  # "static" | "dynamic" | "run"
  check: Callable[[Any], str | None]
  doc: str


FIELDS: dict[str, Field] = {
    # data
    "dataset": Field("static", _choice(DATASETS), "training data"),
    "data_seed": Field("static", _int(0, 2**32 - 1), "seed of the train/test split and of synthetic data"),
    "test_fraction": Field("static", _float(0, 1, lo_open=True, hi_open=True), "digits: share held out for test"),
    "regression_dim": Field("static", _int(1), "gaussian_regression: input and output dimension"),
    "regression_train_size": Field("static", _int(2), "gaussian_regression: training examples"),
    "regression_test_size": Field("static", _int(1), "gaussian_regression: test examples"),
    "monitor_size": Field("static", _int(1), "fixed training examples for percentile records"),
    "tfds_data_dir": Field("static", _str, "TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)"),
    # model
    "arch": Field("static", _choice(ARCHS), "mlp (Ioffe), dln (deep linear network) or vgg (CNN)"),
    "width": Field("static", _int(1), "units per hidden dense layer"),
    "depth": Field("static", _int(1), "hidden dense (normalised) layers; one output layer follows"),
    "channels": Field("static", _positive_int_tuple, "vgg: channels of each conv stage"),
    "convs_per_stage": Field("static", _int(1), "vgg: 3x3 conv layers per stage (then 2x2 pooling)"),
    "activation": Field("static", _choice(ACTIVATIONS), "nonlinearity (dln: identity)"),
    "norm": Field("static", _choice(NORM_KINDS), "normalisation before each nonlinearity"),
    "norm_eps": Field("static", _float(0, lo_open=True), "epsilon of every norm"),
    "lp_center": Field("static", _bool, "lp batch norm subtracts the batch mean first"),
    "batch_size": Field("static", _int(1), "training minibatch size"),
    "optimizer": Field("static", _choice(OPTIMIZERS), "sgd, momentum (heavy ball) or adam"),
    # per-model hyperparameters
    "lr": Field("dynamic", _float(0, lo_open=True), "learning rate"),
    "momentum": Field("dynamic", _float(0, 1, hi_open=True), "momentum optimizer: momentum"),
    "b1": Field("dynamic", _float(0, 1, hi_open=True), "adam: first-moment decay"),
    "b2": Field("dynamic", _float(0, 1, hi_open=True), "adam: second-moment decay"),
    "adam_eps": Field("dynamic", _float(0, lo_open=True), "adam: epsilon"),
    "bn_momentum": Field("dynamic", _float(0, 1, hi_open=True), "decay of the running statistics (Flax convention)"),
    "noise_mean_range": Field("dynamic", _float(0), "noisy BN: mu^t ~ U(-r, r)"),
    "noise_scale_low": Field("dynamic", _float(), "noisy BN: sigma^t ~ U(low, high)"),
    "noise_scale_high": Field("dynamic", _float(), "noisy BN: sigma^t ~ U(low, high)"),
    "noise_mean_spread": Field("dynamic", _float(0), "noisy BN: m ~ U(mu^t - d, mu^t + d)"),
    "noise_scale_std": Field("dynamic", _float(0), "noisy BN: s ~ N(sigma^t, std^2)"),
    # the loop
    "seeds": Field("run", _int(1), "number of seed indices (0..seeds-1)"),
    "base_seed": Field("run", _int(0, 2**32 - 1), "root of every random key"),
    "steps": Field("run", _int(1), "training steps"),
    "scan_length": Field("run", _int(1), "steps per inner compiled scan"),
    "record_every": Field("run", _int(1), "cadence of batch-statistic records"),
    "eval_every": Field("run", _int(1), "cadence of test evaluations"),
    "segment_steps": Field("run", _int(1), "steps per compiled call; records are written per segment"),
    "tracked_units": Field("run", _int_tuple, "units whose monitor-set percentiles are recorded"),
    "monitor_mode": Field("run", _choice(MONITOR_MODES), "norm mode of the percentile pass"),
    "eval_batch_chunk": Field("run", _int(1), "test batches evaluated at once (memory bound)"),
    "checkpoint_segments": Field("run", _int(0), "checkpoint the training state after every "
                                 "this many segments, and after the last (0: never, and a "
                                 "rerun starts over)"),
    "checkpoint_keep": Field("run", _int(0), "newest checkpoints kept (0: all)"),
    # probes (DESIGN.md B.2-B.4); a cadence of 0 switches a probe off
    "ics_every": Field("run", _int(0), "steps between gradient-ICS probes (0: off)"),
    "landscape_every": Field("run", _int(0), "steps between loss-landscape probes (0: off)"),
    "landscape_lr_multiples": Field("run", _positive_float_tuple,
                                    "landscape step sizes eta as multiples of each model's lr"),
    "curvature_every": Field("run", _int(0), "steps between Hessian probes (0: off)"),
    "curvature_batch_size": Field("run", _int(1), "the fixed probe batch: the first training examples"),
    "lanczos_steps": Field("run", _int(1), "Lanczos steps per SLQ vector (Hessian-vector products)"),
    "slq_vectors": Field("run", _int(1), "random start vectors of the spectral density"),
    "hutchinson_samples": Field("run", _int(1), "Rademacher vectors of the trace estimate"),
    "probe_memory_mb": Field("run", _int(0), "accelerator memory per device for the curvature "
                             "probe's Lanczos bases and Hutchinson vectors; "
                             "models are probed in chunks that fit (0: a quarter of the "
                             "device's, else 2 GiB; a CPU probes one model per device at a time)"),
    # test time (DESIGN.md B.7; icsjax.test_time)
    "test_time_every": Field("run", _int(0), "steps between test-time evaluations: statistics "
                             "modes, shifted inputs, BN adaptation (0: off)"),
    "test_batch_sizes": Field("run", _distinct_tuple(_is_positive_int, "positive integers"),
                              "test batch sizes of the statistics modes (batch statistics "
                              "depend on them)"),
    "population_batches": Field("run", _int(1), "training minibatches (of batch_size) that "
                                "population statistics average over (Ioffe Alg. 2)"),
    "shift_corruptions": Field("run", _corruptions, "input shifts of the test set, each at "
                               "every severity (the clean set is always evaluated)"),
    "tfds_corruptions": Field("run", _distinct_tuple(
        lambda u: u in tfds_data.CIFAR10_CORRUPTIONS,
        f"names among {', '.join(tfds_data.CIFAR10_CORRUPTIONS)}", empty_ok=True),
        "dataset=cifar10: TFDS cifar10_corrupted test sets (CIFAR-10-C) at every severity, "
        "as corruptions tfds_<name>"),
    "shift_severities": Field("run", _distinct_tuple(_is_severity, "integers 1..5"),
                              "severities of every shift (1..5, as CIFAR-10-C)"),
    "adapt_sizes": Field("run", _distinct_tuple(_is_positive_int, "positive integers",
                                                empty_ok=True),
                         "n: shifted examples BN statistics are adapted on; also the batch "
                         "size of the shifted evaluation (empty: no shift evaluation)"),
    "adapt_priors": Field("run", _distinct_tuple(_is_prior, "finite numbers >= 0"),
                          "N: prior strength of the source statistics, weight N/(N+n) "
                          "(0: full adaptation)"),
    "adapt_set": Field("run", _choice(ADAPT_SETS), "statistics of the evaluated batch itself "
                       "(test_batch) or of n shifted training examples (separate)"),
    "cpu_devices": Field("run", _int(0), "CPU only: split the host into this many XLA devices "
                         "and shard the model axis over them (0: one per core; 1: no split)"),
}
DYNAMIC_FIELDS = tuple(k for k, f in FIELDS.items() if f.role == "dynamic")
STATIC_FIELDS = tuple(k for k, f in FIELDS.items() if f.role == "static")
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


def _short_repr(value: Any, limit: int = 80) -> str:
  """A one-line repr (messages stay one line whatever the value)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  text = " ".join(repr(value).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _fail(field: str, value: Any, phrase: str) -> ConfigError:
  return ConfigError(f"config.{field}={_short_repr(value)} {phrase}")


def _check_value(field: str, value: Any, where: str):
  phrase = FIELDS[field].check(value)
  if phrase is not None:
    raise _fail(where, value, phrase)


def _sweep_items(config) -> dict[str, tuple]:
  sweep = config.get(SWEEP_KEY) or {}
  if not isinstance(sweep, (dict, ml_collections.ConfigDict)):
    raise _fail(SWEEP_KEY, sweep, "must map field names to tuples of values, "
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
      raise _fail(where, values, "must be a non-empty tuple of values")
    for v in values:
      _check_value(name, v, where)
    if len(set(values)) != len(values):
      raise _fail(where, values, "must not repeat a value")
    items[name] = tuple(values)
  return items


OPTIONAL_CADENCES = tuple(f"{p}_every" for p in PROBES) + ("test_time_every",)


def _check_cadences(c):
  n = c.scan_length
  cadences = ("record_every", "eval_every") + tuple(p for p in OPTIONAL_CADENCES if c[p])
  for name in cadences:
    if c[name] % n:
      raise _fail(name, c[name], f"must be a multiple of scan_length={n}"
                  + (" (or 0: off)" if name in OPTIONAL_CADENCES else ""))
  for name in cadences:
    if c.segment_steps % c[name]:
      raise _fail("segment_steps", c.segment_steps,
                  f"must be a multiple of {name}={c[name]} (and of every cadence that is on: "
                  f"{', '.join(cadences)})")
  if c.steps % c.segment_steps:
    raise _fail("steps", c.steps, f"must be a multiple of segment_steps={c.segment_steps}")


def _check_group(static: dict, config, label: str):
  """Checks that need several static values together (the data sizes too)."""
  from icsjax import data as data_lib  # sizes only; loads nothing heavy
  where = f" (in group {label})" if label else ""
  if static["arch"] == "dln" and static["activation"] != "identity":
    raise ConfigError(f"config.activation={static['activation']!r} must be 'identity' "
                      f"when arch='dln' (a deep linear network){where}")
  n_train, n_test = data_lib.split_sizes(static)
  if static["batch_size"] > n_train:
    raise _fail("batch_size", static["batch_size"],
                f"must be <= {n_train}, the training set size of {static['dataset']}{where}")
  if static["batch_size"] > n_test:
    raise _fail("batch_size", static["batch_size"],
                f"must be <= {n_test}, the test set size of {static['dataset']} "
                f"(train-mode evaluation uses test batches of the training batch size){where}")
  if static["norm"] in BATCH_NORM_KINDS and static["batch_size"] < 2:
    raise _fail("batch_size", static["batch_size"],
                f"must be >= 2 for norm={static['norm']!r}: batch statistics of one "
                f"example are undefined{where}")
  if config.steps * static["batch_size"] >= 2**31:
    raise _fail("steps", config.steps, f"times batch_size={static['batch_size']} must be "
                f"< 2**31 (minibatch positions are int32){where}")
  if static["monitor_size"] > n_train:
    raise _fail("monitor_size", static["monitor_size"],
                f"must be <= {n_train}, the training set size{where}")
  if static["arch"] == "vgg" and static["dataset"] not in IMAGE_DATASETS:
    raise ConfigError(f"config.dataset={static['dataset']!r} must be one of "
                      f"{', '.join(IMAGE_DATASETS)} when arch='vgg' (a CNN needs images){where}")
  if config.curvature_every:
    _check_curvature(static, config, n_train, where)
  if config.test_time_every:
    _check_test_time(static, config, n_train, n_test, where)
  from icsjax import models  # shapes only
  units = min(models.build(static, 1).layer_units)
  bad = [u for u in config.tracked_units if u >= units]
  if bad:
    raise _fail("tracked_units", tuple(config.tracked_units),
                f"must name units below {units}, the narrowest normalised layer "
                f"(width, channels){where}")


def _check_curvature(static: dict, config, n_train: int, where: str):
  b = config.curvature_batch_size
  if b > n_train:
    raise _fail("curvature_batch_size", b, f"must be <= {n_train}, the training set size{where}")
  if static["norm"] in BATCH_NORM_KINDS and b < 2:
    raise _fail("curvature_batch_size", b, f"must be >= 2 for norm={static['norm']!r}: the "
                f"probe runs in train mode, on batch statistics{where}")
  from icsjax import data as data_lib, models  # shapes only
  num_params = models.num_params(static, *data_lib.input_shape_and_outputs(static))
  if config.lanczos_steps > num_params:
    raise _fail("lanczos_steps", config.lanczos_steps,
                f"must be <= {num_params}, the model's parameter count (a Krylov basis "
                f"has at most that many vectors){where}")


def _check_test_time(static: dict, config, n_train: int, n_test: int, where: str):
  from icsjax import shifts
  for name in ("test_batch_sizes", "adapt_sizes"):
    if any(b > n_test for b in config[name]):
      raise _fail(name, tuple(config[name]), f"must be <= {n_test}, the test set size{where}")
  if config.adapt_set == "separate" and any(n > n_train for n in config.adapt_sizes):
    raise _fail("adapt_sizes", tuple(config.adapt_sizes), f"must be <= {n_train}, the "
                f"training set size (adapt_set='separate' adapts on training examples){where}")
  if config.tfds_corruptions and static["dataset"] not in tfds_data.CORRUPTED_DATASETS:
    raise _fail("tfds_corruptions", tuple(config.tfds_corruptions),
                f"must be () for dataset={static['dataset']!r}: TFDS has corrupted test sets "
                f"of {', '.join(tfds_data.CORRUPTED_DATASETS)} only{where}")
  image_only = shifts.needs_images(config.shift_corruptions)
  if image_only and static["dataset"] not in IMAGE_DATASETS:
    raise _fail("shift_corruptions", tuple(config.shift_corruptions),
                f"may not hold {', '.join(image_only)} for dataset={static['dataset']!r} "
                f"(image corruptions need one of {', '.join(IMAGE_DATASETS)}){where}")


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
    raise _fail("noise_scale_low", max(lows), f"must be <= noise_scale_high={min(highs)}")
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
