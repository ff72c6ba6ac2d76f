"""Shared test settings: compile fast, and a tiny study config."""

import os
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Compile time dominates these tiny programs; XLA's optimisations do not pay off,
# except for convolutions: unoptimised, vmapped ones run some 25x slower, so
# tests of VGG models switch optimisations back on around their run.
jax.config.update("jax_disable_most_optimizations", True)
# Equality tests compare float32 runs; on GPUs the default matmul precision may be
# TF32, whose rounding the loops would amplify differently. (CPU ignores this.)
jax.config.update("jax_default_matmul_precision", "highest")


def tiny_config(**overrides):
  """The default config shrunk to seconds: 2 hidden layers of 8 units, 40 steps."""
  from configs import default
  c = default.get_config()
  c.width = 8
  c.depth = 2
  c.batch_size = 16
  c.monitor_size = 32
  c.tracked_units = (0, 3)
  c.seeds = 2
  c.steps = 40
  c.scan_length = 5
  c.record_every = 10
  c.eval_every = 20
  c.segment_steps = 20
  c.sweep.norm = ("batchnorm",)
  c.sweep.lr = (0.05, 0.1, 0.2, 0.4)
  c.ics_every = c.landscape_every = c.curvature_every = 0  # probes: see test_probes
  c.test_time_every = 0  # test-time evaluation: see test_test_time
  for k, v in overrides.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return c


@pytest.fixture
def tiny():
  return tiny_config
