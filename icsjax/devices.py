"""Splitting one CPU host into several XLA devices, so that the model axis can
be sharded over them: XLA runs one device's small, batched matrix products on
few cores, and devices run side by side (benchmarks/README.md, "Training throughput").

JAX reads the device count when it first starts a backend, so this must run
before any computation. In a notebook, do it yourself right after importing JAX:

  import jax
  jax.config.update("jax_num_cpu_devices", 8)
"""

import os

FLAG = "--xla_force_host_platform_device_count"


def auto_cpu_devices() -> int:
  """One XLA device per usable core (more devices than cores ran slower). On a
  GPU or TPU host the split only shapes the CPU platform, which a study does
  not use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def requested(cpu_devices: int) -> int:
  """The device count a config's cpu_devices asks for (0: automatic)."""
  return cpu_devices if cpu_devices > 0 else auto_cpu_devices()


def split_cpu_host(count: int) -> str:
  """Asks JAX for `count` CPU devices; returns what was done, in words."""
  if count <= 1:
    return "one CPU device"
  if FLAG in os.environ.get("XLA_FLAGS", ""):
    return f"XLA_FLAGS already sets {FLAG}; kept it"
  import jax
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # a backend has started: the count is fixed
    return (f"JAX had already started, so cpu_devices={count} has no effect; call "
            f"jax.config.update('jax_num_cpu_devices', {count}) before any computation")
  return f"CPU split into {count} devices"
