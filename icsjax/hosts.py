"""Many hosts: one study over every device of every process, on JAX's
multi-controller runtime (``jax.distributed``).

Every host runs the same command. Each process loads the data itself, builds
the same groups and calls the same compiled segments, whose model axis spans
the devices of all processes; JAX runs them as one program. What reaches the
workdir passes through process 0 (the primary): the segments' records and the
checkpoints' states are gathered from every process (``to_host``, a
collective every process calls), and only process 0 writes them.

``jax.distributed.initialize`` must run before JAX starts a backend, and only
when there is more than one process: with ``--num_processes`` > 1 (and
``--process_id``, ``--coordinator_address``), or in a cluster JAX detects
itself (a TPU VM slice, SLURM, Open MPI) that holds more than one process. A
single process never calls it.

The coordination service's heartbeat finds a process that died: the others
end within ``--heartbeat_timeout`` seconds with JAX's own fatal message
("Terminating process because the JAX distributed service detected fatal
errors"), or sooner, at the next collective, which fails when its peer's
connection closes.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
import warnings

from icsjax import config_files

HEARTBEAT_SECONDS = 30
CLUSTERS = ("GceTpuCluster", "GkeTpuCluster", "SlurmCluster", "OmpiCluster")  # JAX's names
EXIT_CODE = 4  # README, "Exit codes": another process of the run stopped
# How JAX's runtime words a collective or a barrier whose peer is gone.
PEER_LOST = ("Gloo", "coordination service", "heartbeat", "Connection reset",
             "Connection closed", "DEADLINE_EXCEEDED", "UNAVAILABLE")
# Process 0 writes the summary and the report while the others wait at JAX's
# shutdown barrier (default 300 s, less than a large study's report can take).
SHUTDOWN_SECONDS = 3600


@dataclasses.dataclass(frozen=True)
class Plan:
  """The arguments of jax.distributed.initialize; None fields are auto-detected."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  heartbeat_timeout: int
  cluster: str = ""  # the cluster JAX detected, if the flags did not say


def detected_cluster() -> tuple[str, int] | None:
  """(name, processes) of a cluster JAX detects by itself (a TPU VM slice, a
  SLURM job, Open MPI), None outside one. Asks JAX's own detectors (a private
  API, so a failure reads as no cluster). Not Kubernetes': a pod is no
  multi-host run by itself (give the flags there)."""
  try:
    from jax._src import clusters
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      for env in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
        if env.__name__ in CLUSTERS and env.is_env_present():
          return env.__name__, int(env.get_process_count())
  except Exception:  # pylint: disable=broad-exception-caught
    return None
  return None


def plan(num_processes: int | None, process_id: int | None, coordinator_address: str | None,
         heartbeat_timeout: int, cluster: tuple[str, int] | None) -> Plan | None:
  """How this process joins a run of many (None: it runs alone); a flag that
  cannot work raises CommandLineError naming it."""
  if heartbeat_timeout < 1:
    raise config_files.CommandLineError(
        f"--heartbeat_timeout={heartbeat_timeout} must be at least 1 (seconds)")
  if num_processes is not None and num_processes < 1:
    raise config_files.CommandLineError(f"--num_processes={num_processes} must be at least 1")
  if num_processes is None or num_processes == 1:
    stray = [f for f, v in (("--process_id", process_id),
                            ("--coordinator_address", coordinator_address)) if v is not None]
    if stray:
      raise config_files.CommandLineError(
          f"{stray[0]} is given, but --num_processes is not > 1: give --num_processes=N "
          f"(N > 1) with --process_id and --coordinator_address, or none of them")
    if num_processes is None and cluster is not None and cluster[1] > 1:
      return Plan(None, None, None, heartbeat_timeout, cluster[0])
    return None
  if coordinator_address is None or process_id is None:
    missing = "--coordinator_address" if coordinator_address is None else "--process_id"
    raise config_files.CommandLineError(
        f"--num_processes={num_processes} needs {missing} too (--process_id from 0 to "
        f"{num_processes - 1} on each process, and the same --coordinator_address=HOST:PORT "
        f"of process 0 on all)")
  if not 0 <= process_id < num_processes:
    raise config_files.CommandLineError(
        f"--process_id={process_id} must be from 0 to {num_processes - 1} "
        f"(--num_processes={num_processes})")
  if ":" not in coordinator_address:
    raise config_files.CommandLineError(
        f"--coordinator_address={coordinator_address} must be HOST:PORT (process 0's host)")
  return Plan(coordinator_address, num_processes, process_id, heartbeat_timeout)


_joined: list[bool] = [False]


def joined() -> bool:
  """Whether this process joined a run of several (start)."""
  return _joined[0]


def exit(code: int) -> None:  # pylint: disable=redefined-builtin
  """Ends this process with `code`. In a run of several, at once (os._exit): a
  process leaving the run in order would make JAX's runtime wait for it, and its
  peers, inside a collective, would wait for it for good; one that vanishes stops
  sending heartbeats, so they end within --heartbeat_timeout."""
  if not joined():
    sys.exit(code)
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)


def peer_lost(e: BaseException) -> bool:
  """Whether `e`, met in a run of several, says another process of it is gone."""
  return joined() and type(e).__name__ == "JaxRuntimeError" and any(
      w in str(e) for w in PEER_LOST)


def lost_line(e: BaseException, command: str) -> str:
  """The one line a process ends with when another process of its run stopped."""
  first = (str(e).strip().splitlines() or [""])[0][:160]
  return (f"error: another process of this run stopped ({first}); the workdir keeps its "
          f"last intact checkpoint: rerun the same command on every host to resume from "
          f"it: {command}")


def start(p: Plan | None) -> tuple[int, int]:
  """Joins the run `p` describes (jax.distributed.initialize); returns (this
  process's index, processes). None: nothing is called, (0, 1). Starts no JAX
  backend, so the CPU split (icsjax.devices) can still follow."""
  if p is None:
    return 0, 1
  import logging
  import jax
  from jax._src import distributed
  logging.getLogger("jax._src.distributed").setLevel(logging.WARNING)
  # CPU devices of several processes talk through gloo (JAX's default has none).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(p.coordinator_address, p.num_processes, p.process_id,
                             heartbeat_timeout_seconds=p.heartbeat_timeout,
                             shutdown_timeout_seconds=SHUTDOWN_SECONDS)
  _joined[0] = True
  # jax.process_index() would start the backend; the runtime's own record does not.
  return distributed.global_state.process_id, distributed.global_state.num_processes


# What a run asks once JAX is up. One process: exactly what it did before.

def count() -> int:
  import jax
  return jax.process_count()


def index() -> int:
  import jax
  return jax.process_index()


def primary() -> bool:
  """Whether this process writes the workdir (process 0)."""
  return index() == 0


def model_devices(devices: int) -> list:
  """The devices a model axis over `devices` devices spans: as many of each
  process's as of every other's (a multiple of the process count; each process
  runs its share), in process order."""
  import jax
  per_process = devices // count()
  return [d for p in range(count())
          for d in sorted((d for d in jax.devices() if d.process_index == p),
                          key=lambda d: d.id)[:per_process]]


def to_host(tree):
  """A tree of arrays as numpy, whole on every process: an array spread over the
  devices of several processes is gathered (a collective: every process must
  call this, in the same order)."""
  import jax
  if count() == 1:
    return jax.device_get(tree)  # one transfer for the whole tree, as before
  from jax.experimental import multihost_utils

  def one(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return multihost_utils.process_allgather(a, tiled=True)
    return jax.device_get(a)
  return jax.tree_util.tree_map(one, tree)


def barrier(name: str) -> None:
  """Every process waits here for all (nothing with one process)."""
  if count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def gather_ints(values) -> "list[list[int]]":
  """Each process's int32 values, in process order (one process: its own)."""
  import numpy as np
  values = np.asarray(values, np.int32)
  if count() == 1:
    return [values.tolist()]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(values)).tolist()


def check_shared_workdir(workdir) -> None:
  """Refuses, on every process, a workdir the processes do not share: process 0
  writes a marker with a random token, and every process must read the same
  token back. Raises workdir_lock.WorkdirError naming those that could not."""
  if count() == 1:
    return
  from icsjax import workdir_lock
  from icsjax import workdir_path
  marker = workdir_path.path(workdir) / workdir_lock.SHARED_MARKER
  if primary():
    marker.write_text(secrets.token_hex(16))
  barrier("icsjax-workdir-marker-written")
  try:
    token = marker.read_text().strip()
  except OSError:
    token = ""
  seen = gather_ints([int(token[i:i + 7], 16) if len(token) == 32 else -1
                      for i in range(0, 28, 7)])
  barrier("icsjax-workdir-marker-read")
  if primary():
    marker.unlink()
  blind = [p for p, s in enumerate(seen) if s != seen[0]]
  if blind:
    raise workdir_lock.WorkdirError(
        f"--workdir={workdir} is not shared by the processes of this run: process "
        f"{', '.join(map(str, blind))} cannot read what process 0 wrote there; give every "
        f"host the same directory on a shared filesystem")
