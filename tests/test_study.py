"""Config validation and expansion (icsjax.study), before any compute.

The contract: every bad config is rejected by ``study.validate`` with a
``ConfigError`` whose message is one line, names the field as ``config.<field>``
or ``config.sweep.<field>`` and says what is allowed; a valid config expands
into groups of labelled models in a fixed order.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import subprocess
import sys

import ml_collections
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from icsjax import study  # noqa: E402
from icsjax.study import ConfigError  # noqa: E402

DEFAULT_CONFIG_PATH = os.path.join(ROOT, "configs", "default.py")
DELETE = object()  # marks a field to remove from the config
DIGITS_TRAIN, DIGITS_TEST = 1438, 359  # 1797 digits, test_fraction=0.2 -> 359 held out


def default_config() -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("icsjax_default_config", DEFAULT_CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def make_config(**changes) -> ml_collections.ConfigDict:
  """A fresh default config with `changes` applied.

  Keys are field names, or ``sweep__<field>`` for sweep entries; a value of
  DELETE removes the entry. The config is rebuilt from a plain dict so that any
  value (wrong types and unknown fields included) can be set.
  """
  d = default_config().to_dict()
  for key, value in changes.items():
    target = d
    if key.startswith("sweep__"):
      target, key = d.setdefault("sweep", {}), key[len("sweep__"):]
    if key == "sweep" and isinstance(value, dict):
      value = dict(value)
    if value is DELETE:
      target.pop(key, None)
    else:
      target[key] = value
  return ml_collections.ConfigDict(d)


def assert_config_error(cfg, field: str, *phrases: str) -> str:
  with pytest.raises(ConfigError) as info:
    study.validate(cfg)
  msg = str(info.value)
  assert msg, "empty ConfigError message"
  assert "\n" not in msg and "\r" not in msg, f"message is not one line: {msg!r}"
  assert f"config.{field}" in msg, f"message does not name config.{field}: {msg!r}"
  for phrase in phrases:
    assert phrase in msg, f"message lacks {phrase!r}: {msg!r}"
  return msg


# --- 1. many distinct errors, each naming its field and what is allowed ------------

ALL_NORMS = "none, batchnorm, noisy_batchnorm, layernorm"
CASES = [
    # (id, changes, field named in the message, phrases about what is allowed)
    # unknown and missing fields
    ("unknown-field", dict(not_a_field=1), "not_a_field", ["not a known field", "known fields:"]),
    ("unknown-field-typo", dict(learning_rate=0.1), "learning_rate", ["known fields:", "lr"]),
    ("missing-field", dict(lr=DELETE), "lr", ["missing", "configs/default.py"]),
    ("missing-run-field", dict(segment_steps=DELETE), "segment_steps", ["missing"]),
    # wrong types
    ("lr-string", dict(lr="0.1"), "lr", ["must be a number"]),
    ("width-float", dict(width=100.0), "width", ["must be an integer"]),
    ("depth-bool", dict(depth=True), "depth", ["must be an integer"]),
    ("seeds-string", dict(seeds="5"), "seeds", ["must be an integer"]),
    ("lp_center-int", dict(lp_center=1), "lp_center", ["must be True or False"]),
    ("tracked_units-int", dict(tracked_units=3), "tracked_units", ["non-empty tuple of integers"]),
    # out of range
    ("lr-zero", dict(lr=0.0), "lr", ["must be > 0"]),
    ("lr-nan", dict(lr=float("nan")), "lr", ["must be finite"]),
    ("adam_eps-inf", dict(adam_eps=float("inf")), "adam_eps", ["must be finite"]),
    ("momentum-one", dict(momentum=1.0), "momentum", ["must be < 1"]),
    ("b2-negative", dict(b2=-0.1), "b2", ["must be >= 0"]),
    ("bn_momentum-one", dict(bn_momentum=1.0), "bn_momentum", ["must be < 1"]),
    ("test_fraction-one", dict(test_fraction=1.0), "test_fraction", ["must be < 1"]),
    ("test_fraction-zero", dict(test_fraction=0.0), "test_fraction", ["must be > 0"]),
    ("norm_eps-zero", dict(norm_eps=0.0), "norm_eps", ["must be > 0"]),
    ("noise_scale_std-negative", dict(noise_scale_std=-0.1), "noise_scale_std", ["must be >= 0"]),
    ("noise_mean_range-negative", dict(noise_mean_range=-1.0), "noise_mean_range", [">= 0"]),
    ("data_seed-negative", dict(data_seed=-1), "data_seed", ["must be >= 0"]),
    ("base_seed-negative", dict(base_seed=-1), "base_seed", ["must be >= 0"]),
    ("seeds-zero", dict(seeds=0), "seeds", ["must be >= 1"]),
    ("width-zero", dict(width=0), "width", ["must be >= 1"]),
    ("steps-zero", dict(steps=0), "steps", ["must be >= 1"]),
    ("record_every-zero", dict(record_every=0), "record_every", ["must be >= 1"]),
    ("eval_batch_chunk-zero", dict(eval_batch_chunk=0), "eval_batch_chunk", ["must be >= 1"]),
    ("regression_train_size-one", dict(regression_train_size=1), "regression_train_size",
     ["must be >= 2"]),
    ("tracked_units-empty", dict(tracked_units=()), "tracked_units", ["non-empty tuple"]),
    ("tracked_units-negative", dict(tracked_units=(0, -1)), "tracked_units",
     ["non-negative integers"]),
    ("tracked_units-repeat", dict(tracked_units=(1, 1)), "tracked_units", ["must not repeat"]),
    # unknown choices
    ("norm-choice", dict(norm="batch_norm"), "norm", ["must be one of", ALL_NORMS]),
    ("dataset-choice", dict(dataset="imagenet"), "dataset",
     ["must be one of", "digits, gaussian_regression"]),
    ("arch-choice", dict(arch="cnn"), "arch", ["must be one of", "mlp, dln"]),
    ("activation-choice", dict(activation="gelu"), "activation",
     ["must be one of", "sigmoid, relu, tanh, identity"]),
    ("optimizer-choice", dict(optimizer="rmsprop"), "optimizer",
     ["must be one of", "sgd, momentum, adam"]),
    ("monitor_mode-choice", dict(monitor_mode="test"), "monitor_mode",
     ["must be one of", "train, eval"]),
    # cadences that do not fit the loop (scan_length=50, record 100, eval 250, segment 500)
    ("record_every-not-scan-multiple", dict(record_every=30), "record_every",
     ["multiple of scan_length=50"]),
    ("eval_every-not-scan-multiple", dict(eval_every=75), "eval_every",
     ["multiple of scan_length=50"]),
    ("segment-not-record-multiple", dict(segment_steps=450, steps=2700), "segment_steps",
     ["multiple of record_every=100"]),
    ("segment-not-eval-multiple", dict(segment_steps=600, steps=3000), "segment_steps",
     ["multiple of eval_every=250"]),
    ("steps-not-segment-multiple", dict(steps=3100), "steps", ["multiple of segment_steps=500"]),
    ("steps-below-segment", dict(steps=250, eval_every=250, segment_steps=500), "steps",
     ["multiple of segment_steps=500"]),
    # probes (default: ics and landscape every 250 steps, curvature every 500)
    ("ics_every-not-scan-multiple", dict(ics_every=30), "ics_every",
     ["multiple of scan_length=50", "0: off"]),
    ("ics_every-negative", dict(ics_every=-50), "ics_every", ["must be >= 0"]),
    ("segment-not-curvature-multiple", dict(curvature_every=1000), "segment_steps",
     ["multiple of curvature_every=1000"]),
    ("landscape-multiples-zero", dict(landscape_lr_multiples=(0.0, 1.0)),
     "landscape_lr_multiples", ["> 0", "eta = 0"]),
    ("landscape-multiples-empty", dict(landscape_lr_multiples=()), "landscape_lr_multiples",
     ["non-empty tuple"]),
    ("landscape-multiples-repeat", dict(landscape_lr_multiples=(1.0, 1.0)),
     "landscape_lr_multiples", ["must not repeat"]),
    ("hutchinson-zero", dict(hutchinson_samples=0), "hutchinson_samples", ["must be >= 1"]),
    # checkpoints
    ("checkpoint-segments-negative", dict(checkpoint_segments=-1), "checkpoint_segments",
     ["must be >= 0"]),
    ("checkpoint-segments-float", dict(checkpoint_segments=1.5), "checkpoint_segments",
     ["integer"]),
    ("checkpoint-keep-negative", dict(checkpoint_keep=-2), "checkpoint_keep", ["must be >= 0"]),
    # test time (default: every 500 steps)
    ("test-time-not-scan-multiple", dict(test_time_every=30), "test_time_every",
     ["multiple of scan_length=50", "0: off"]),
    ("segment-not-test-time-multiple", dict(test_time_every=1000), "segment_steps",
     ["multiple of test_time_every=1000"]),
    ("test-batch-sizes-empty", dict(test_batch_sizes=()), "test_batch_sizes", ["non-empty tuple"]),
    ("test-batch-sizes-zero", dict(test_batch_sizes=(0, 4)), "test_batch_sizes",
     ["positive integers"]),
    ("test-batch-sizes-repeat", dict(test_batch_sizes=(4, 4)), "test_batch_sizes",
     ["must not repeat"]),
    ("test-batch-above-test", dict(test_batch_sizes=(1, 400)), "test_batch_sizes",
     [f"<= {DIGITS_TEST}", "test set size"]),
    ("population-batches-zero", dict(population_batches=0), "population_batches", [">= 1"]),
    ("corruption-unknown", dict(shift_corruptions=("fog",)), "shift_corruptions",
     ["names among", "gaussian_noise", "mean_shift"]),
    ("corruption-string", dict(shift_corruptions="blur"), "shift_corruptions", ["tuple of"]),
    ("image-corruption-on-vectors", dict(dataset="gaussian_regression", tracked_units=(0,)),
     "shift_corruptions", ["gaussian_noise", "image corruptions need"]),
    ("tfds-corruption-unknown", dict(tfds_corruptions=("rain",)), "tfds_corruptions",
     ["names among", "fog"]),
    ("tfds-corruption-not-cifar10", dict(tfds_corruptions=("fog",)), "tfds_corruptions",
     ["must be ()", "dataset='digits'", "cifar10"]),
    ("severity-zero", dict(shift_severities=(0, 3)), "shift_severities", ["integers 1..5"]),
    ("severity-six", dict(shift_severities=(6,)), "shift_severities", ["integers 1..5"]),
    ("severity-empty", dict(shift_severities=()), "shift_severities", ["non-empty tuple"]),
    ("adapt-size-zero", dict(adapt_sizes=(0,)), "adapt_sizes", ["positive integers"]),
    ("adapt-size-above-test", dict(adapt_sizes=(4, 400)), "adapt_sizes",
     [f"<= {DIGITS_TEST}", "test set size"]),
    ("adapt-size-above-train-separate",
     dict(dataset="gaussian_regression", regression_train_size=64, batch_size=32,
          monitor_size=8, curvature_every=0, tracked_units=(0,),
          shift_corruptions=("mean_shift",), adapt_set="separate",
          adapt_sizes=(100,)), "adapt_sizes", ["<= 64", "training set size", "separate"]),
    ("adapt-prior-negative", dict(adapt_priors=(-1.0, 16.0)), "adapt_priors", [">= 0"]),
    ("adapt-prior-nan", dict(adapt_priors=(float("nan"),)), "adapt_priors", ["finite"]),
    ("adapt-priors-empty", dict(adapt_priors=()), "adapt_priors", ["non-empty tuple"]),
    ("adapt-set-choice", dict(adapt_set="train"), "adapt_set",
     ["must be one of", "test_batch, separate"]),
    ("lanczos-above-params", dict(lanczos_steps=10**6), "lanczos_steps",
     ["<= 27710", "parameter count"]),
    ("curvature-batch-above-train", dict(curvature_batch_size=5000), "curvature_batch_size",
     [f"<= {DIGITS_TRAIN}"]),
    ("curvature-batch-one-bn", dict(curvature_batch_size=1), "curvature_batch_size",
     [">= 2", "train mode"]),
    # checks across fields and against the data sizes
    ("noise-low-above-high", dict(noise_scale_low=2.0), "noise_scale_low",
     ["<= noise_scale_high=1.25"]),
    ("batch-above-train", dict(batch_size=2000), "batch_size",
     [f"<= {DIGITS_TRAIN}", "training set size"]),
    ("batch-above-test", dict(batch_size=400), "batch_size", [f"<= {DIGITS_TEST}", "test set size"]),
    ("batch-above-regression-train", dict(dataset="gaussian_regression", regression_train_size=32),
     "batch_size", ["<= 32", "training set size of gaussian_regression"]),
    ("batch-one-batchnorm", dict(batch_size=1), "batch_size", [">= 2", "batchnorm"]),
    ("batch-one-lp-batchnorm", dict(batch_size=1, sweep__norm=("layernorm", "l1_batchnorm")),
     "batch_size", [">= 2", "l1_batchnorm"]),
    ("monitor-above-train", dict(monitor_size=2000), "monitor_size", [f"<= {DIGITS_TRAIN}"]),
    ("tracked-not-below-width", dict(width=2), "tracked_units", ["below 2"]),
    ("dln-needs-identity", dict(arch="dln"), "activation", ["'identity'", "dln"]),
    # sweep structure
    ("sweep-run-field-seeds", dict(sweep__seeds=(1, 2)), "sweep.seeds",
     ["cannot be swept", "sweepable fields:", "lr"]),
    ("sweep-run-field-steps", dict(sweep__steps=(500, 1000)), "sweep.steps",
     ["cannot be swept", "sweepable fields:"]),
    ("sweep-run-field-tracked", dict(sweep__tracked_units=((0,), (1,))), "sweep.tracked_units",
     ["cannot be swept"]),
    ("sweep-unknown-key", dict(sweep__not_a_field=(1, 2)), "sweep.not_a_field",
     ["not a config field", "sweepable fields:"]),
    ("sweep-empty-tuple", dict(sweep__lr=()), "sweep.lr", ["non-empty tuple"]),
    ("sweep-scalar", dict(sweep__lr=0.1), "sweep.lr", ["non-empty tuple"]),
    ("sweep-string", dict(sweep__norm="batchnorm"), "sweep.norm", ["non-empty tuple"]),
    ("sweep-duplicate", dict(sweep__lr=(0.1, 0.1)), "sweep.lr", ["must not repeat"]),
    ("sweep-duplicate-static", dict(sweep__norm=("none", "none")), "sweep.norm",
     ["must not repeat"]),
    # bad values that only appear inside a sweep
    ("sweep-lr-negative", dict(sweep__lr=(0.1, -1.0)), "sweep.lr", ["must be > 0"]),
    ("sweep-lr-nan", dict(sweep__lr=(0.1, float("nan"))), "sweep.lr", ["must be finite"]),
    ("sweep-norm-choice", dict(sweep__norm=("none", "groupnorm")), "sweep.norm",
     ["must be one of", ALL_NORMS]),
    ("sweep-width-zero", dict(sweep__width=(100, 0)), "sweep.width", ["must be >= 1"]),
    ("sweep-width-float", dict(sweep__width=(100, 50.5)), "sweep.width", ["must be an integer"]),
    ("sweep-momentum-one", dict(optimizer="momentum", sweep__momentum=(0.5, 1.0)),
     "sweep.momentum", ["must be < 1"]),
    ("sweep-lp_center-int", dict(sweep__lp_center=(True, 0.5)), "sweep.lp_center",
     ["must be True or False"]),
    # swept values that break a check across fields or a group check
    ("sweep-width-breaks-tracked", dict(sweep__width=(2, 100)), "tracked_units",
     ["below 2", "width-2"]),
    ("sweep-batch-breaks-train", dict(sweep__batch_size=(60, 2000)), "batch_size",
     [f"<= {DIGITS_TRAIN}", "batch_size-2000"]),
    ("sweep-batch-one-breaks-bn", dict(sweep__batch_size=(1, 60)), "batch_size",
     [">= 2", "batch_size-1"]),
    ("sweep-monitor-breaks-train", dict(sweep__monitor_size=(256, 5000)), "monitor_size",
     [f"<= {DIGITS_TRAIN}", "monitor_size-5000"]),
    ("sweep-arch-dln-needs-identity", dict(sweep__arch=("mlp", "dln")), "activation",
     ["'identity'", "arch-dln"]),
    ("sweep-test_fraction-empties-test", dict(sweep__test_fraction=(0.2, 0.01)), "batch_size",
     ["test set size", "test_fraction-0.01"]),
    ("sweep-dataset-small-test", dict(sweep__dataset=("digits", "gaussian_regression"),
                                      regression_test_size=10),
     "batch_size", ["<= 10", "test set size of gaussian_regression"]),
    ("sweep-noise-low-above-high", dict(sweep__noise_scale_low=(1.0, 1.5)), "noise_scale_low",
     ["<= noise_scale_high=1.25"]),
    ("sweep-noise-high-below-low", dict(noise_scale_low=1.0, sweep__noise_scale_high=(2.0, 0.5)),
     "noise_scale_low", ["<= noise_scale_high=0.5"]),
]


@pytest.mark.parametrize("changes,field,phrases", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_config_error(changes, field, phrases):
  assert_config_error(make_config(**changes), field, *phrases)


def test_error_cases_are_distinct():
  ids = [c[0] for c in CASES]
  assert len(ids) == len(set(ids)) and len(ids) >= 20
  for _, changes, _, _ in CASES:
    make_config(**changes)  # every case builds (fails only in validation)


def test_expand_raises_the_same_errors():
  cfg = make_config(sweep__lr=(0.1, -1.0))
  with pytest.raises(ConfigError, match=r"^config\.sweep\.lr="):
    study.expand(cfg)


def test_error_through_a_locked_config_override():
  """A typical command-line override: the locked default with one value changed."""
  cfg = default_config()
  cfg.lock()
  cfg.record_every = 30
  assert_config_error(cfg, "record_every", "multiple of scan_length=50")


def test_unknown_field_added_to_an_unlocked_config():
  cfg = default_config()
  cfg.unlock()
  cfg.extra_knob = 3
  assert_config_error(cfg, "extra_knob", "not a known field")


def test_validation_is_silent_on_valid_edge_values():
  """Boundary values that are allowed must pass."""
  ok = [
      dict(batch_size=DIGITS_TEST),                       # batch == test set size
      dict(monitor_size=DIGITS_TRAIN),                    # monitor == training set size
      dict(tracked_units=(99,)),                          # width - 1
      dict(noise_scale_low=1.25),                         # low == high
      dict(batch_size=1, sweep__norm=("none", "layernorm")),  # no batch norm: one example ok
      dict(arch="dln", activation="identity"),
      dict(record_every=50, eval_every=50, segment_steps=50, steps=50, ics_every=50,
           landscape_every=50, curvature_every=50, test_time_every=50),
      dict(ics_every=0, landscape_every=0, curvature_every=0, test_time_every=0, record_every=50,
           segment_steps=250, steps=500),
      dict(curvature_every=0, lanczos_steps=10**6, curvature_batch_size=1),  # probe off
      dict(test_time_every=0, test_batch_sizes=(10**6,), adapt_sizes=(10**6,)),  # test time off
      dict(adapt_sizes=(), shift_corruptions=(), test_batch_sizes=(1, DIGITS_TEST),
           adapt_priors=(0,), population_batches=1000),  # clean only; wraps the training set
      dict(dataset="gaussian_regression", tracked_units=(0,),
           shift_corruptions=("mean_shift", "scale_shift")),  # feature shifts suit any input
      dict(lanczos_steps=27710, curvature_batch_size=2),  # parameters of the smallest group
      dict(momentum=0.0, b1=0.0, bn_momentum=0.0, noise_mean_range=0.0),
      dict(lr=1),                                         # an int is a number
      dict(sweep=None),
      dict(sweep={}),
      dict(sweep=DELETE),
  ]
  for changes in ok:
    study.validate(make_config(**changes))


# --- 2. the default config and its expansion ---------------------------------------

def test_default_config_validates_and_expands():
  cfg = default_config()
  sweep = study.validate(cfg)
  assert sweep == {"norm": ("none", "batchnorm", "noisy_batchnorm"), "lr": (0.1, 0.5),
                   "depth": (3, 8)}

  s = study.expand(cfg)
  names = [g.name for g in s.groups]
  assert names == [f"depth-{d}_norm-{n}" for d in (3, 8) for n in sweep["norm"]]
  assert len(s.groups) == 6  # the swept static values: 2 depths x 3 norms
  assert s.num_models == 2 * 3 * 2 * cfg.seeds
  assert s.num_segments == cfg.steps // cfg.segment_steps

  next_id = 0
  for g, (depth, norm) in zip(s.groups, [(d, n) for d in (3, 8) for n in sweep["norm"]]):
    assert g.variant == norm and g.static["norm"] == norm and g.static["depth"] == depth
    assert g.static == {**{k: cfg[k] for k in study.STATIC_FIELDS}, "norm": norm,
                        "depth": depth}
    assert g.size == 2 * cfg.seeds
    assert g.model_ids == tuple(range(next_id, next_id + g.size))
    next_id += g.size
    assert set(g.coords) == {"variant", "seed", "lr", "depth"}
    assert g.coords["variant"] == (norm,) * g.size
    assert g.coords["depth"] == (depth,) * g.size
    assert g.coords["seed"] == (0, 1, 2, 3, 4) * 2          # seed fastest
    assert g.coords["lr"] == (0.1,) * 5 + (0.5,) * 5
    assert set(g.hparams) == set(study.DYNAMIC_FIELDS)
    assert g.hparams["lr"] == g.coords["lr"]
    for k in study.DYNAMIC_FIELDS:
      if k != "lr":
        assert g.hparams[k] == (cfg[k],) * g.size, k
  assert next_id == s.num_models


def test_expand_orders_a_richer_grid():
  """Two swept static fields, two swept dynamic fields and three seeds."""
  cfg = make_config(
      sweep={"lr": (0.05, 0.2, 0.4), "norm": ("none", "layernorm"), "b1": (0.8, 0.95),
             "width": (50, 100)},
      optimizer="adam", seeds=3, depth=2)
  s = study.expand(cfg)

  # One group per combination of swept static values, in config-field order
  # (width is declared before norm), whatever the order of the sweep's keys.
  statics = list(itertools.product((50, 100), ("none", "layernorm")))
  assert len(s.groups) == math.prod(len(v) for v in ((50, 100), ("none", "layernorm")))
  assert [g.name for g in s.groups] == [f"width-{w}_norm-{n}" for w, n in statics]

  # Within a group: swept dynamic values in config-field order (lr before b1),
  # then the seed index fastest.
  rows = [(lr, b1, seed) for lr in (0.05, 0.2, 0.4) for b1 in (0.8, 0.95) for seed in range(3)]
  all_ids = []
  for g, (w, n) in zip(s.groups, statics):
    assert g.static["width"] == w and g.static["norm"] == n and g.static["depth"] == 2
    assert g.static["optimizer"] == "adam"
    assert g.size == len(rows) == 18
    assert set(g.coords) == {"variant", "seed", "width", "lr", "b1"}
    assert g.coords["variant"] == (n,) * 18
    assert g.coords["width"] == (w,) * 18
    assert g.coords["lr"] == tuple(r[0] for r in rows)
    assert g.coords["b1"] == tuple(r[1] for r in rows)
    assert g.coords["seed"] == tuple(r[2] for r in rows)
    assert all(len(v) == g.size for v in g.coords.values())
    assert set(g.hparams) == set(study.DYNAMIC_FIELDS)
    assert all(len(v) == g.size for v in g.hparams.values())
    assert g.hparams["lr"] == g.coords["lr"]
    assert g.hparams["b1"] == g.coords["b1"]
    assert g.hparams["b2"] == (cfg.b2,) * 18
    assert g.hparams["adam_eps"] == (cfg.adam_eps,) * 18
    all_ids.extend(g.model_ids)
  assert all_ids == list(range(s.num_models)) and s.num_models == 4 * 18


def test_expand_without_sweep_is_one_main_group():
  cfg = make_config(sweep=DELETE, seeds=2)
  s = study.expand(cfg)
  assert [g.name for g in s.groups] == ["main"]
  g, = s.groups
  assert g.model_ids == (0, 1)
  assert g.coords == {"variant": (cfg.norm,) * 2, "seed": (0, 1)}
  assert g.hparams == {k: (cfg[k],) * 2 for k in study.DYNAMIC_FIELDS}


def test_only_dynamic_sweep_is_one_group():
  cfg = make_config(sweep={"lr": (0.1, 0.2), "noise_scale_std": (0.0, 0.2)}, seeds=1)
  s = study.expand(cfg)
  assert [g.name for g in s.groups] == ["main"]
  g, = s.groups
  assert g.coords["lr"] == (0.1, 0.1, 0.2, 0.2)
  assert g.coords["noise_scale_std"] == (0.0, 0.2, 0.0, 0.2)
  assert g.coords["seed"] == (0, 0, 0, 0)
  assert g.hparams["noise_scale_std"] == (0.0, 0.2, 0.0, 0.2)


def test_every_field_has_a_role_and_the_default_sets_every_field():
  cfg = default_config()
  assert set(cfg.keys()) == set(study.FIELDS) | {study.SWEEP_KEY}
  assert {f.role for f in study.FIELDS.values()} == {"static", "dynamic", "run"}
  for name, f in study.FIELDS.items():
    assert f.check(cfg[name]) is None, name


# --- 3. errors come before any data loading, compilation or workdir ----------------

class ComputeReached(Exception):
  pass


@pytest.fixture
def no_compute(monkeypatch):
  """Everything past validation raises ComputeReached."""
  from icsjax import data as data_lib
  from icsjax import runner
  from icsjax import store
  from icsjax import train

  def boom(*args, **kwargs):
    raise ComputeReached("compute reached")

  monkeypatch.setattr(data_lib, "load", boom)
  monkeypatch.setattr(store, "prepare_workdir", boom)
  monkeypatch.setattr(runner, "build_group_runs", boom)
  monkeypatch.setattr(train, "make_loop", boom)
  monkeypatch.setattr(train, "init_model", boom)
  return runner


@pytest.mark.parametrize("changes", [
    dict(record_every=30),
    dict(sweep__lr=(0.1, -1.0)),
    dict(sweep__width=(2, 100)),
    dict(sweep__seeds=(1, 2)),
    dict(batch_size=2000),
    dict(not_a_field=1),
], ids=["cadence", "sweep-value", "sweep-group-check", "sweep-run-field", "group-check",
        "unknown-field"])
def test_config_error_before_compute(no_compute, tmp_path, changes):
  runner = no_compute
  workdir = tmp_path / "w"
  with pytest.raises(ConfigError):
    runner.run(make_config(**changes), workdir, progress=False, log=lambda *a: None)
  assert not workdir.exists()


def test_valid_config_reaches_the_patched_compute(no_compute, tmp_path):
  """Control: the patches above do sit on the path a valid config takes."""
  runner = no_compute
  with pytest.raises(ComputeReached):
    runner.run(default_config(), tmp_path / "w", progress=False, log=lambda *a: None)


# --- 4. the command line fails fast, with one error line --------------------------

def run_cli(tmp_path, *overrides):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "icsjax.main", "--config=configs/default.py",
       f"--workdir={tmp_path / 'w'}", "--progress=false", *overrides],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli_config_error(tmp_path):
  proc = run_cli(tmp_path, "--config.record_every=30")
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines and lines[-1].startswith("error: config.record_every"), proc.stderr
  assert "multiple of scan_length=50" in lines[-1]
  assert not (tmp_path / "w").exists()


def test_cli_sweep_error(tmp_path):
  proc = run_cli(tmp_path, "--config.sweep.lr=(0.1,-1.0)")
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert lines and lines[-1].startswith("error: config.sweep.lr="), proc.stderr
  assert not (tmp_path / "w").exists()


def test_cli_unknown_override(tmp_path):
  proc = run_cli(tmp_path, "--config.not_a_field=1")
  assert proc.returncode != 0
  assert "not_a_field" in proc.stdout + proc.stderr
  assert not (tmp_path / "w").exists()


# --- odd inputs that once slipped past validation --------------------------------

def test_sweep_of_unhashable_values_is_a_config_error():
  assert_config_error(make_config(sweep__lr=([0.1], [0.2])), "sweep.lr", "must be a number")


def test_non_mapping_sweep_is_a_config_error():
  assert_config_error(make_config(sweep=5), "sweep", "")


def test_sweep_bool_among_ints_reports_the_type():
  assert_config_error(make_config(sweep__width=(1, True)), "sweep.width", "must be an integer")


def test_sweep_mapping_value_message_is_one_line():
  assert_config_error(make_config(sweep__lr={"a": 0.1, "b": 0.2}), "sweep.lr", "non-empty tuple")


def test_array_value_message_is_one_line():
  import numpy as np
  assert_config_error(make_config(tracked_units=np.arange(40)), "tracked_units", "tuple")


def test_base_seed_beyond_prng_range_is_a_config_error():
  assert_config_error(make_config(base_seed=2**64), "base_seed", "<=")


def test_step_positions_must_fit_int32():
  assert_config_error(make_config(steps=500 * (2**31 // (60 * 500) + 1), segment_steps=500), "steps", "2**31")


def test_vgg_needs_images():
  assert_config_error(make_config(arch="vgg", dataset="gaussian_regression",
                                  activation="relu"), "dataset", "arch='vgg'", "digits")


def test_tracked_units_must_fit_the_narrowest_conv_stage():
  assert_config_error(make_config(arch="vgg", channels=(2, 8), width=16, activation="relu"),
                      "tracked_units", "below 2")


# --- sweeping any static or dynamic field from the command line -------------------

def test_command_line_sweeps_any_static_or_dynamic_field():
  from icsjax import config_files
  argv = ["main", "--config=configs/default.py", "--config.sweep.depth=(1,2)",
          "--config.sweep.bn_momentum", "(0.9,0.99)", "--config.sweep.norm=(none,batchnorm)",
          "--config.sweep.lr=0.1", "--config.seeds=2", "--", "--config.sweep.width=(3,)"]
  rest, sweeps = config_files.split_sweeps(argv)
  assert rest == ["main", "--config=configs/default.py", "--config.seeds=2", "--",
                  "--config.sweep.width=(3,)"]
  assert sweeps == {"depth": (1, 2), "bn_momentum": (0.9, 0.99),
                    "norm": ("none", "batchnorm"), "lr": (0.1,)}
  cfg = default_config()
  cfg.lock()
  config_files.add_sweeps(cfg, sweeps)
  groups = study.expand(cfg).groups
  assert [g.name for g in groups] == ["depth-1_norm-none", "depth-1_norm-batchnorm",
                                      "depth-2_norm-none", "depth-2_norm-batchnorm"]
  assert [g.static["depth"] for g in groups] == [1, 1, 2, 2]
  for g in groups:
    assert g.coords["bn_momentum"] == (0.9,) * cfg.seeds + (0.99,) * cfg.seeds
    assert set(g.coords["lr"]) == {0.1}


@pytest.mark.parametrize("overrides, message", [
    (("--config.sweep.depth=(1,2)", "--config.sweep.depth=(3,0)"),  # the last one wins
     "error: config.sweep.depth=0 must be >= 1"),
    (("--config.sweep.steps=(100,200)",), "error: config.sweep.steps cannot be swept"),
    (("--config.sweep.depth=(1,",), "error: --config.sweep.depth='(1,' must be a tuple"),
])
def test_cli_sweep_mistakes_are_one_line(tmp_path, overrides, message):
  proc = run_cli(tmp_path, *overrides)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
  assert not (tmp_path / "w").exists()
