"""Shared test settings: compile fast, compile each program once per run, run
the slowest tests first, and a tiny study config."""

import os
import shutil
import sys
import tempfile
import warnings

import jax
import pytest

# Test processes (pytest -n, and the tests' own subprocesses) may share one GPU:
# none takes most of its memory up front (read when a GPU backend starts).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# Many tests compile the same small programs (the tiny config, in several modules
# and in subprocesses), so this run's processes share one compilation cache. The
# pytest process (pytest-xdist's controller, under -n) makes it in
# pytest_configure and deletes it at the end; its workers and the tests'
# subprocesses inherit it through the environment.
JIT_CACHE = "ICSJAX_TEST_JIT_CACHE"
JIT_CACHE_SETTINGS = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
OWNS_JIT_CACHE = False

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Compile time dominates these tiny programs; XLA's optimisations do not pay off.
# That holds for the VGG tests too: unoptimised, vmapped convolutions run some
# 25x slower, but over a test's few steps compiling them optimised costs more
# (a VGG config's two steps: 31 s optimised, 22 s not).
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
  del c.sweep["depth"]  # one depth: the default study's depth axis is its own test
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


def use_jit_cache(path):
  """This process's compilations, and its subprocesses' (JAX reads the
  environment at import), go through the cache at path."""
  os.environ.update({JIT_CACHE: path, "JAX_COMPILATION_CACHE_DIR": path, **JIT_CACHE_SETTINGS})
  jax.config.update("jax_compilation_cache_dir", path)
  for name, value in JIT_CACHE_SETTINGS.items():
    jax.config.update(name.lower(), int(value))


if JIT_CACHE in os.environ:  # a worker or a subprocess of this run
  use_jit_cache(os.environ[JIT_CACHE])


def pytest_configure(config):
  global OWNS_JIT_CACHE
  config.addinivalue_line("markers", "slow: tens of seconds on 2 cores; scheduled first")
  if JIT_CACHE not in os.environ:
    OWNS_JIT_CACHE = True
    use_jit_cache(tempfile.mkdtemp(prefix="icsjax-tests-jit-"))


@pytest.hookimpl(trylast=True)  # after pytest-xdist's, which tags grouped tests' ids
def pytest_collection_modifyitems(config, items):
  """Tests marked slow (tens of seconds each on 2 cores) first, so that parallel
  workers (pytest -n) start them early and finish together.

  Under --dist loadgroup a worker's grouped tests carry "@group" in their ids;
  without it (pytest 9.2, pytest-dev/pytest-xdist#1386) every worker would
  compute test_report's module fixtures again, a minute in all."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
  if getattr(config.option, "loadgroup", False) and any(
      item.get_closest_marker("xdist_group") and "@" not in item.nodeid for item in items):
    warnings.warn("pytest-xdist's loadgroup does not group tests under pytest "
                  f"{pytest.__version__}; requirements.txt pins a pytest under which it does")


def pytest_sessionfinish(session):
  if OWNS_JIT_CACHE:
    shutil.rmtree(os.environ[JIT_CACHE], ignore_errors=True)


@pytest.fixture(scope="session")
def gcs_bucket():
  """A local Cloud Storage emulator (tests/gcs_emulator.py) for the session: gs://
  paths of this process and its subprocesses reach its bucket."""
  import gcs_emulator
  with gcs_emulator.running() as emulator:
    yield emulator
