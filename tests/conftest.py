"""Shared test settings: compile fast, compile each program once per run, run
the slowest tests first, and a tiny study config."""

import os
import shutil
import sys
import tempfile

# Test processes (pytest -n, and the tests' own subprocesses) may share one GPU:
# none takes most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Many tests compile the same small programs (the tiny config, in several modules
# and in subprocesses), so this run's processes share one compilation cache:
# the first process of the run (pytest, or pytest-xdist's controller) makes it,
# its workers and subprocesses inherit it through the environment, and the
# first process removes it at the end.
OWNS_JIT_CACHE = "ICSJAX_TEST_JIT_CACHE" not in os.environ
if OWNS_JIT_CACHE:
  os.environ["ICSJAX_TEST_JIT_CACHE"] = tempfile.mkdtemp(prefix="icsjax-tests-jit-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["ICSJAX_TEST_JIT_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (after the environment it reads)
import pytest  # noqa: E402

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


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: tens of seconds on 2 cores; scheduled first")


def pytest_collection_modifyitems(items):
  """Tests marked slow (tens of seconds each on 2 cores) first, so that parallel
  workers (pytest -n) start them early and finish together."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_sessionfinish(session):
  if OWNS_JIT_CACHE:
    shutil.rmtree(os.environ["ICSJAX_TEST_JIT_CACHE"], ignore_errors=True)
