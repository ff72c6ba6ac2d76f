"""Where a group's models run: the model axis over the devices of every process
(icsjax.hosts), padding to a multiple of the device count, and, on a CPU, chunks of models a device trains
at a time and one model per device for a probe that wants its own cache.

Measured reasons for each choice are in benchmarks/README.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from icsjax import hosts

MODEL_CHUNK = 4  # models a CPU device trains at a time, where its share allows
DEFAULT_PROBE_MEMORY = 2 * 2**30  # an accelerator that does not report its memory


def devices_for(num_models: int, available: int, processes: int = 1) -> int:
  """How many devices a group's model axis spans: the fewest models per device,
  then the least padding (9 models on 4 devices: 3 devices of 3, not 4 of 3).
  With several processes, a multiple of their count: each runs its share of
  every segment, so each must hold some of its models."""
  per_device = lambda d: -(-num_models // d)
  most = min(available, -(-num_models // processes) * processes)
  return min(range(processes, most + 1, processes),
             key=lambda d: (per_device(d), d * per_device(d) - num_models))


def model_mesh(devices: int, first: int = 0) -> jax.sharding.Mesh:
  """`devices` devices along one axis, "model": one process's from its device
  `first` on (a block: `device_blocks`), or as many of each process's
  (hosts.model_devices; `first` is then 0)."""
  if first:
    return jax.sharding.Mesh(np.array(jax.devices()[first:first + devices]), ("model",))
  return jax.sharding.Mesh(np.array(hosts.model_devices(devices)), ("model",))


# Backends whose programs get a block of devices each (`device_blocks`).
BLOCK_BACKENDS = ("gpu", "tpu")


def device_blocks(count: int, backend: str, available: int,
                  processes: int = 1) -> list[tuple[int, int]]:
  """(first device, devices available) of each of a run's `count` programs.

  On accelerators (BLOCK_BACKENDS) of one process, several programs get
  blocks of their own: devices // programs wide, or single devices in turn
  when the programs outnumber the devices. Their segments, dispatched one
  after another, then run at once, each program spreading its models over
  its block only: small programs are bound by launches, not arithmetic, so
  programs side by side multiply the throughput. A CPU's devices split one
  host's cores, which a program spread over every device already keeps busy;
  programs side by side could only leave cores idle when they end unevenly,
  so there, as with several processes, every program spreads over every
  device, one after another."""
  if backend not in BLOCK_BACKENDS or processes > 1 or available == 1 or count == 1:
    return [(0, available)] * count
  width = max(1, available // count)
  return [((i % (available // width)) * width, width) for i in range(count)]


def model_sharding(num_models: int, block: tuple[int, int] | None = None):
  """The model axis laid out over the devices of `block` ((first, available);
  None: every device) that share it best (None: one device)."""
  first, available = block or (0, jax.device_count())
  d = devices_for(num_models, available, hosts.count())
  if d == 1 and not first:
    return None
  return jax.sharding.NamedSharding(model_mesh(d, first), jax.sharding.PartitionSpec("model"))


def pad_models(values, multiple: int):
  """Repeats the last model's entry until the model axis divides `multiple`.
  The copies train like any model and are dropped from the records."""
  k = len(values)
  return np.concatenate([values, np.repeat(values[-1:], -k % multiple, axis=0)])


def place(tree, num_models: int, block: tuple[int, int] | None = None):
  """A host tree of a program's real models, padded and laid out over the devices
  of `block` it uses here (which may be more or fewer than a run that saved it had)."""
  sharding = model_sharding(num_models, block)
  devices = 1 if sharding is None else sharding.mesh.size
  tree = jax.tree_util.tree_map(lambda a: jnp.asarray(pad_models(np.asarray(a), devices)), tree)
  return tree if sharding is None else jax.device_put(tree, sharding)


def probes_in_sequence(backend: str) -> bool:
  """Whether probes work in sequence (a CPU: a model's work arrays then stay in
  cache) rather than all at once (an accelerator: fewer, larger kernels)."""
  return backend == "cpu"


def probe_memory_bytes(probe_memory_mb: int) -> int:
  """The memory a device may give a probe's per-model work arrays."""
  if probe_memory_mb:
    return probe_memory_mb * 2**20
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return limit // 4 if limit else DEFAULT_PROBE_MEMORY


def model_chunk(models_per_device: int) -> int:
  """Models one CPU device trains at a time: the divisor of its share nearest
  MODEL_CHUNK (ties: the larger), so that a chunk's weights and minibatches
  stay in cache. Accelerators want the whole share at once."""
  divisors = [c for c in range(1, models_per_device + 1) if models_per_device % c == 0]
  return min(divisors, key=lambda c: (abs(c - MODEL_CHUNK), -c))


def group_model_chunk(num_models: int, devices: int, bytes_per_model: int,
                      budget: int, backend: str) -> int:
  """Models a device trains at a time (0: its whole share).

  On a CPU, model_chunk (cache locality). Anywhere, no more than the probe
  memory budget holds for probes that keep per-model work arrays: the largest
  divisor of the share that fits, at least 1.
  """
  share = -(-num_models // devices)
  chunk = model_chunk(share) if backend == "cpu" else share
  if bytes_per_model:
    fits = max(1, budget // bytes_per_model)
    chunk = max(c for c in range(1, share + 1) if share % c == 0 and c <= min(chunk, fits))
  return 0 if chunk == share and backend != "cpu" else chunk


def in_chunks(fn, tree, devices: int, chunk: int):
  """fn over the model axis of `tree`, chunk models per device at a time.

  The axis (devices * rounds * chunk) is regrouped as (rounds, devices * chunk)
  so that each device's block stays on it; lax.map runs the rounds in turn.
  """
  k = jax.tree_util.tree_leaves(tree)[0].shape[0]
  rounds = k // (devices * chunk)
  if rounds == 1:
    return fn(tree)

  def regroup(a):
    a = a.reshape((devices, rounds, chunk) + a.shape[1:])
    return jnp.swapaxes(a, 0, 1).reshape((rounds, devices * chunk) + a.shape[3:])

  def ungroup(a):
    a = a.reshape((rounds, devices, chunk) + a.shape[2:])
    return jnp.swapaxes(a, 0, 1).reshape((k,) + a.shape[3:])

  out = jax.lax.map(fn, jax.tree_util.tree_map(regroup, tree))
  return jax.tree_util.tree_map(ungroup, out)


def one_model_per_device(fn, devices: int, first: int = 0):
  """fn of one model, which when vmapped over a segment's model axis (devices
  contiguous blocks) runs one model per device at a time: lax.map over each
  device's models, and fn unbatched on each device (shard_map), so that one
  model's work arrays stay in that device's cache. Unbatched rather than
  vmapped over a block of one, which XLA compiles into slower code.

  Inside the segment's vmap a function sees one model and cannot loop over
  the models itself; custom_vmap hands it the model axis.
  """
  batched_fn = jax.custom_batching.custom_vmap(fn)

  @batched_fn.def_vmap
  def rule(axis_size, in_batched, *args):
    del axis_size
    leaves, treedef = jax.tree_util.tree_flatten(args)
    flags = jax.tree_util.tree_leaves(in_batched)

    own = [leaf for leaf, f in zip(leaves, flags) if f]
    shared = [leaf for leaf, f in zip(leaves, flags) if not f]

    def one(batched, shared):  # one model, unbatched
      b, s = iter(batched), iter(shared)
      return fn(*jax.tree_util.tree_unflatten(treedef, [next(b) if f else next(s) for f in flags]))

    def on_devices(batched_leaves):
      def block(batched, shared):  # a device's block: one model, unless devices are fewer
        if batched[0].shape[0] > 1:
          return jax.vmap(lambda *b: one(b, shared))(*batched)
        out = one([a[0] for a in batched], shared)
        return jax.tree_util.tree_map(lambda a: a[None], out)
      if devices == 1:
        return block(batched_leaves, shared)
      model = jax.sharding.PartitionSpec("model")
      return jax.shard_map(block, mesh=model_mesh(devices, first),
                           in_specs=(model, jax.sharding.PartitionSpec()), out_specs=model,
                           check_vma=False)(batched_leaves, shared)

    out = in_chunks(on_devices, own, devices, 1)
    return out, jax.tree_util.tree_map(lambda _: True, out)

  return batched_fn
