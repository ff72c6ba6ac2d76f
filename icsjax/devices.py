"""Splitting one CPU host into several XLA devices, so the model axis can be
sharded over them (see ../shared/PERFORMANCE.md: on a CPU host this runs the
models' small matmuls side by side instead of one after another).

XLA reads the device count once, when JAX first starts a backend, so this
must run before any computation. In a notebook, set it yourself first:

  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  import jax
"""

import os

FLAG = "--xla_force_host_platform_device_count"


def auto_cpu_devices() -> int:
  """One XLA device per usable core. On a 2-core host, 2 devices ran 32 Ioffe
  MLPs about 20% faster than one, and 4 or 8 were slower than 2
  (benchmarks/vs_pytorch.py, README "Performance"). On a GPU or TPU host the
  split only shapes the CPU platform, which the study does not use."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def requested(cpu_devices: int) -> int:
  """The device count a config's cpu_devices asks for (0: automatic)."""
  return cpu_devices if cpu_devices > 0 else auto_cpu_devices()


def split_cpu_host(count: int) -> str:
  """Asks XLA for `count` CPU devices; returns what was done, in words."""
  if count <= 1:
    return "one CPU device"
  flags = os.environ.get("XLA_FLAGS", "")
  if FLAG in flags:
    return f"XLA_FLAGS already sets {FLAG}; kept it"
  from jax._src import xla_bridge
  if xla_bridge.backends_are_initialized():
    return (f"JAX had already started, so cpu_devices={count} has no effect; "
            f"set XLA_FLAGS={FLAG}={count} before importing jax")
  os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={count}".strip()
  return f"CPU split into {count} devices"
