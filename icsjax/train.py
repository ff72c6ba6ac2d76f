"""The training loop of one compiled group, as pure functions of (state, key, data).

A segment is ``jit(vmap over models(scan over chunks(scan over scan_length
steps; records and evaluations when due)))``. The chunk counter comes from
the outer scan, so it is never a batched value and ``lax.cond`` on it runs
one branch. Minibatch indices are drawn inside the compiled segment, once
per seed index, and nothing crosses to the host until the segment ends.

Step numbering: step t (1-based) is the t-th update. The per-step loss of
step t is the minibatch loss before that update; a record or evaluation "at
step t" reads the state after update t (batch statistics: those of the
forward pass of update t). Probes (icsjax.probes) run at the end of a chunk
too: gradient-ICS and the landscape probe update t itself, the curvature
probe reads the state after it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from icsjax import data as data_lib
from icsjax import models
from icsjax import optim
from icsjax import probes
from icsjax import test_time
from icsjax.norms import NOISY_NORMS, RUNNING_STAT_NAMES

QUANTILES = (0.15, 0.50, 0.85)
KEY_INIT, KEY_DATA, KEY_NOISE = 0, 1, 2
# Purposes folded into a model's (noise key, step): the step's own noise, the
# monitor pass, the curvature probe's frozen noise and its random vectors.
DRAW_STEP, DRAW_MONITOR, DRAW_CURVATURE_NOISE, DRAW_CURVATURE_VECTORS = 0, 1, 2, 3


class ModelState(struct.PyTreeNode):
  params: Any
  batch_stats: Any
  opt_state: Any
  noise_key: jax.Array
  diverged_step: jax.Array  # int32: the step whose loss or update was not finite; 0 if none


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """The loop-shaping (run-role) config values a compiled segment depends on."""
  scan_length: int
  record_every: int
  eval_every: int
  segment_steps: int
  tracked_units: tuple[int, ...]
  monitor_mode: str
  eval_batch_chunk: int
  base_seed: int
  seeds: int
  ics_every: int
  landscape_every: int
  landscape_lr_multiples: tuple[float, ...]
  curvature_every: int
  curvature_batch_size: int
  lanczos_steps: int
  slq_vectors: int
  hutchinson_samples: int
  test_time_every: int
  test_batch_sizes: tuple[int, ...]
  population_batches: int
  shift_corruptions: tuple[str, ...]
  shift_severities: tuple[int, ...]
  tfds_corruptions: tuple[str, ...]
  adapt_sizes: tuple[int, ...]
  adapt_priors: tuple[float, ...]
  adapt_set: str

  @classmethod
  def from_config(cls, config) -> "RunSpec":
    value = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
    return cls(**{f.name: value(config[f.name]) for f in dataclasses.fields(cls)})

  def every_of(self, kind: str) -> int:
    """The cadence in steps of a record kind (record, eval or a probe; 0: off)."""
    return getattr(self, {"record": "record_every", "eval": "eval_every"}.get(
        kind, f"{kind}_every"))


def seed_key(base_seed: int, seed_index, purpose: int):
  """The key of one seed index for one purpose; shared by every model of that seed."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(base_seed), seed_index),
                            purpose)


def segment_batch_indices(key, start_step, num_steps: int, batch_size: int, num_train: int):
  """Minibatch indices of steps start_step+1 .. start_step+num_steps, shape (steps, batch).

  Examples are drawn epoch by epoch: epoch e is a permutation keyed by
  fold_in(key, e), read as one stream, so batches cross epoch ends and any
  batch size works.
  """
  pos = start_step * batch_size + jnp.arange(num_steps * batch_size)
  first_epoch = (start_step * batch_size) // num_train
  spanned = (num_steps * batch_size + num_train - 1) // num_train + 1
  perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), num_train))(
      first_epoch + jnp.arange(spanned))
  idx = perms[pos // num_train - first_epoch, pos % num_train]
  return idx.reshape(num_steps, batch_size)


def task_loss(outputs, y, task: str):
  """Mean loss over the batch and, for classification, accuracy (else None).

  Cross-entropy against one-hot labels: its gradient is elementwise, where the
  integer-label form's is a scatter, a separate slow op on a CPU.
  """
  if task == data_lib.REGRESSION:
    return jnp.mean(jnp.sum(jnp.square(outputs - y), axis=-1)), None
  one_hot = jax.nn.one_hot(y, outputs.shape[-1], dtype=outputs.dtype)
  loss = jnp.mean(optax.softmax_cross_entropy(outputs, one_hot))
  return loss, jnp.mean(jnp.argmax(outputs, axis=-1) == y)


def batch_moments(a):
  """Per-unit mean and (biased) variance over every axis but the last."""
  axes = tuple(range(a.ndim - 1))
  mean = jnp.mean(a, axis=axes)
  return mean, jnp.mean(jnp.square(a - mean), axis=axes)


def stack_layers(per_layer, units: int):
  """Stacks per-layer (units_i, ...) arrays into (layer, units, ...), NaN-padded
  where a layer has fewer units than the widest one."""
  pad = lambda a: jnp.pad(a, [(0, units - a.shape[0])] + [(0, 0)] * (a.ndim - 1),
                          constant_values=jnp.nan)
  return jnp.stack([pad(a) for a in per_layer])


def tap_moments(taps, units: int):
  """Batch moments of each layer's pre-norm activation and nonlinearity input, (layer, unit)."""
  out = {}
  for name, which in (("preact", 0), ("nonlin_input", 1)):
    moments = [batch_moments(tap[which]) for tap in taps]
    out[f"{name}_mean"] = stack_layers([m for m, _ in moments], units)
    out[f"{name}_var"] = stack_layers([v for _, v in moments], units)
  return out


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def _set_diverged(state: ModelState, bad, step) -> ModelState:
  first = bad & (state.diverged_step == 0)
  return state.replace(diverged_step=jnp.where(first, jnp.asarray(step, jnp.int32),
                                               state.diverged_step))


def _nan_if(flag, tree):
  return jax.tree_util.tree_map(lambda x: jnp.where(flag, jnp.nan, x), tree)


@dataclasses.dataclass(frozen=True)
class GroupProgram:
  """Compiled functions of one group (fixed static config, data shapes and run spec)."""
  static: dict
  run: RunSpec
  task: str
  num_outputs: int
  input_shape: tuple[int, ...]
  num_train: int
  num_test: int
  devices: int = 1      # devices the model axis is sharded over, in contiguous blocks
  model_chunk: int = 0  # models a device trains at a time (0: all of its share)
  # Probes in sequence (CPU: work arrays stay in cache): the curvature probe one model
  # per device at a time, and each probe's evaluations one after another
  # (probes.evaluations). Else all at once (accelerators).
  probes_in_sequence: bool = False

  @property
  def model(self) -> nn.Module:
    return models.build(self.static, self.num_outputs)

  @property
  def max_units(self) -> int:
    return max(self.model.layer_units)

  @property
  def num_layers(self) -> int:
    return len(self.model.layer_units)

  @functools.cached_property
  def num_params(self) -> int:
    return models.num_params(self.static, self.input_shape, self.num_outputs)

  @property
  def weight_layers(self) -> tuple[str, ...]:
    """Every layer with a kernel, in forward order: the normalised ones, then the output."""
    return self.model.layer_names + ("dense_out",)

  @property
  def running_stat_names(self) -> tuple[str, ...]:
    return RUNNING_STAT_NAMES.get(self.static["norm"], ())

  @property
  def num_test_batches(self) -> int:
    return self.num_test // self.static["batch_size"]

  # --- one model ---------------------------------------------------------

  def apply(self, params, batch_stats, x, hp, *, train: bool, noise_key=None):
    """Forward pass: (outputs, taps, new batch_stats)."""
    variables = {"params": params, "batch_stats": batch_stats}
    rngs = {"noise": noise_key} if noise_key is not None else {}
    if train:
      (out, taps), updated = self.model.apply(variables, x, train=True, hp=hp, rngs=rngs,
                                              mutable=["batch_stats"])
      return out, taps, updated.get("batch_stats", {})
    out, taps = self.model.apply(variables, x, train=False, hp=hp)
    return out, taps, batch_stats

  def init_model(self, seed_index, hp) -> ModelState:
    init_key = seed_key(self.run.base_seed, seed_index, KEY_INIT)
    variables = self.model.init({"params": init_key}, jnp.zeros((1,) + self.input_shape),
                                train=False, hp=hp)
    params = variables["params"]
    return ModelState(params=params, batch_stats=variables.get("batch_stats", {}),
                      opt_state=optim.make(self.static["optimizer"], hp).init(params),
                      noise_key=seed_key(self.run.base_seed, seed_index, KEY_NOISE),
                      diverged_step=jnp.zeros((), jnp.int32))

  @staticmethod
  def draw_key(state: ModelState, step, purpose: int):
    """The key of one purpose (DRAW_*) at one step of one model."""
    return jax.random.fold_in(jax.random.fold_in(state.noise_key, step), purpose)

  def noise_key(self, state: ModelState, step, purpose: int):
    """The noise draw of one purpose at one step; None for a norm without noise."""
    if self.static["norm"] not in NOISY_NORMS:
      return None
    return self.draw_key(state, step, purpose)

  def loss(self, params, batch_stats, x, y, hp, noise_key):
    """Train-mode loss of a batch: (loss, (accuracy, taps, updated batch_stats))."""
    out, taps, new_stats = self.apply(params, batch_stats, x, hp, train=True,
                                      noise_key=noise_key)
    loss, acc = task_loss(out, y, self.task)
    return loss, (acc, taps, new_stats)

  def train_step(self, state: ModelState, hp, x, y, step):
    """One update (step is the 1-based update number).

    Returns (state, metrics, batch moments, probes.StepInternals); what a
    caller leaves unused, XLA does not compute.

    Divergence costs one scalar test per step: a non-finite loss sets
    ``diverged_step``. Parameters and statistics are checked once per chunk
    (``flag_nonfinite``), since reducing over every leaf each step costs about
    15% of the step on a CPU. A diverged model keeps training on its
    non-finite values, which cannot reach other models, and reads NaN.
    """
    noise_key = self.noise_key(state, step, DRAW_STEP)
    (loss, (acc, taps, new_stats)), grads = jax.value_and_grad(self.loss, has_aux=True)(
        state.params, state.batch_stats, x, y, hp, noise_key)
    tx = optim.make(self.static["optimizer"], hp)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    inside = probes.StepInternals(params=state.params, batch_stats=state.batch_stats, x=x, y=y,
                                  noise_key=noise_key, loss=loss, grads=grads, updates=updates)
    state = _set_diverged(state, ~jnp.isfinite(loss), step).replace(
        params=new_params, batch_stats=new_stats, opt_state=opt_state)
    metrics = {"train_loss": loss}
    if acc is not None:
      metrics["train_accuracy"] = acc
    return (state, _nan_if(state.diverged_step > 0, metrics),
            tap_moments(taps, self.max_units), inside)

  @staticmethod
  def flag_nonfinite(state: ModelState, step) -> ModelState:
    """Marks a model diverged at `step` if its parameters or statistics are not finite."""
    return _set_diverged(state, ~_all_finite((state.params, state.batch_stats)), step)

  def batch_records(self, state: ModelState, moments, hp, data: data_lib.Dataset, step):
    """Records due every record_every steps, from the state after update `step`."""
    rec = dict(moments)
    for name in self.running_stat_names:
      rec[f"running_{name}"] = stack_layers(
          [state.batch_stats[f"norm_{i}"][name] for i in range(self.num_layers)], self.max_units)
    train = self.run.monitor_mode == "train"
    _, taps, _ = self.apply(state.params, state.batch_stats, data.monitor_x, hp, train=train,
                            noise_key=self.noise_key(state, step, DRAW_MONITOR) if train else None)
    units = jnp.asarray(self.run.tracked_units)
    q = jnp.asarray(QUANTILES)
    # Over monitor examples (and, in a conv layer, every position): (layer, unit, quantile)
    rec["monitor_percentiles"] = jnp.stack(
        [jnp.quantile(z.reshape(-1, z.shape[-1])[:, units], q, axis=0).T for _, z in taps])
    return rec

  def evaluate(self, state: ModelState, hp, data: data_lib.Dataset):
    """Test loss/accuracy in eval mode (running statistics) and in train mode
    (batch statistics of test batches of the training batch size, no noise),
    both over the same num_test_batches * batch_size test examples."""
    b, nb = self.static["batch_size"], self.num_test_batches
    xs = data.test_x[:nb * b].reshape((nb, b) + data.test_x.shape[1:])
    ys = data.test_y[:nb * b].reshape((nb, b) + data.test_y.shape[1:])

    def one_batch(xy):
      x, y = xy
      out = {}
      for mode, train in (("eval_mode", False), ("train_mode", True)):
        o, _, _ = self.apply(state.params, state.batch_stats, x, hp, train=train)
        out[f"test_loss_{mode}"], acc = task_loss(o, y, self.task)
        if acc is not None:
          out[f"test_accuracy_{mode}"] = acc
      return out

    per_batch = jax.lax.map(one_batch, (xs, ys), batch_size=min(self.run.eval_batch_chunk, nb))
    return jax.tree_util.tree_map(jnp.mean, per_batch)

  def curvature_probe(self, state: ModelState, hp, data: data_lib.Dataset, step):
    """probes.curvature_records on the fixed probe batch (the first curvature_batch_size
    training examples), from the state after update `step`."""
    b = self.run.curvature_batch_size
    args = (hp, state.params, state.batch_stats, data.train_x[:b], data.train_y[:b],
            self.noise_key(state, step, DRAW_CURVATURE_NOISE),
            self.draw_key(state, step, DRAW_CURVATURE_VECTORS))
    probe = lambda *a: probes.curvature_records(self, *a)
    if not self.probes_in_sequence:
      return probe(*args)
    return one_model_per_device(probe, self.devices)(*args)

  def due_records(self, state: ModelState, moments, inside, hp, data, step) -> dict:
    """{kind: (cadence in steps, thunk computing that kind's records after update `step`)}.

    ICS and landscape probes read update `step` itself (``inside``); the
    others read the state after it. A kind with cadence 0 is absent.
    """
    run = self.run
    kinds = {"record": (run.record_every,
                        lambda: self.batch_records(state, moments, hp, data, step)),
             "eval": (run.eval_every, lambda: self.evaluate(state, hp, data)),
             "ics": (run.ics_every, lambda: probes.ics_records(self, hp, inside)),
             "landscape": (run.landscape_every, lambda: probes.landscape_records(
                 self, hp, inside, run.landscape_lr_multiples)),
             "curvature": (run.curvature_every,
                           lambda: self.curvature_probe(state, hp, data, step)),
             "test_time": (run.test_time_every,
                           lambda: test_time.records(self, state, hp, data))}
    diverged = state.diverged_step > 0
    return {k: (every, lambda f=f: _nan_if(diverged, f()))
            for k, (every, f) in kinds.items() if every}

  def segment_one(self, state: ModelState, hp, indices, data: data_lib.Dataset, start_step):
    """Train one model for a segment. indices: (segment_steps, batch) minibatch indices."""
    run = self.run
    n = run.scan_length
    chunks = run.segment_steps // n
    idx = indices.reshape(chunks, n, -1)

    def step_at(state, step, batch_idx):
      return self.train_step(state, hp, data.train_x[batch_idx], data.train_y[batch_idx], step)

    def one_step(state, xs):
      state, metrics, _, _ = step_at(state, *xs)  # moments unused: XLA drops their work
      return state, metrics

    def one_chunk(carry, xs):
      state, bufs = carry
      j, chunk_idx = xs
      steps = start_step + j * n + 1 + jnp.arange(n)
      # Records and probes read a chunk's last step only, so that step alone
      # computes its batch moments and keeps its gradient and update.
      state, metrics = jax.lax.scan(one_step, state, (steps[:-1], chunk_idx[:-1]))
      state, last, moments, inside = step_at(state, steps[-1], chunk_idx[-1])
      metrics = jax.tree_util.tree_map(lambda m, l: jnp.concatenate([m, l[None]]), metrics, last)
      end = start_step + (j + 1) * n
      state = self.flag_nonfinite(state, end)
      due = self.due_records(state, moments, inside, hp, data, end)
      bufs = {k: _write_if_due(bufs[k], j, every // n, due[k][1])
              for k, (every, _) in due.items()}
      return (state, bufs), metrics

    def first_records():  # traced for shapes only
      s, _, moments, inside = step_at(state, start_step + 1, idx[0, 0])
      return {k: f() for k, (_, f) in self.due_records(s, moments, inside, hp, data,
                                                        start_step + 1).items()}
    # Zeros that depend on this model's state: under the segment's vmap the buffers
    # are then batched from the start, and scan batches its body (every probe
    # included) in one pass instead of a second one for the carry that turned batched.
    zero = state.diverged_step * 0
    bufs = {k: jax.tree_util.tree_map(
                lambda s: jnp.zeros((run.segment_steps // run.every_of(k),) + s.shape, s.dtype)
                + zero.astype(s.dtype), shapes)
            for k, shapes in jax.eval_shape(first_records).items()}
    (state, bufs), metrics = jax.lax.scan(one_chunk, (state, bufs), (jnp.arange(chunks), idx))
    return state, {"per_step": jax.tree_util.tree_map(lambda m: m.reshape(-1), metrics), **bufs}

  # --- the vmapped group ---------------------------------------------------

  def init(self, model_seeds, hp) -> ModelState:
    """(model seed indices (K,), hparams {name: (K,)}) -> ModelState with leading K.

    Not jitted: op by op, the compiled pieces are shared by every group, which
    costs less than compiling one init program per group.
    """
    # The optimizer state keeps the hyperparameters it was built with; copies, so
    # that donating the state to a segment cannot delete the caller's arrays.
    return jax.vmap(self.init_model)(model_seeds, jax.tree_util.tree_map(jnp.copy, hp))

  @functools.cached_property
  def segment(self):
    """jit: (states, hparams, model seed indices, data, start_step) -> (states, records)."""
    def run_segment(states, hp, model_seeds, data, start_step):
      # Indices are drawn once per seed index and shared by all its models.
      keys = jax.vmap(lambda s: seed_key(self.run.base_seed, s, KEY_DATA))(
          jnp.arange(self.run.seeds))
      per_seed = jax.vmap(lambda k: segment_batch_indices(
          k, start_step, self.run.segment_steps, self.static["batch_size"], self.num_train))(keys)
      train_models = jax.vmap(self.segment_one, in_axes=(0, 0, 0, None, None))
      xs = (states, hp, per_seed[model_seeds])
      if not self.model_chunk:
        return train_models(*xs, data, start_step)
      return _in_chunks(lambda xs: train_models(*xs, data, start_step), xs, self.devices,
                        self.model_chunk)
    return jax.jit(run_segment, donate_argnums=0)


MODEL_CHUNK = 4


def model_chunk(models_per_device: int) -> int:
  """Models one CPU device trains at a time: the divisor of its share nearest
  MODEL_CHUNK (ties: the larger). On 2 cores, 32 Ioffe MLPs on one device ran
  1.7x faster as 8 chunks of 4 in turn than as one vmap of 32: a chunk's
  weights and minibatches stay in cache. Accelerators want the whole share at
  once, so they do not chunk."""
  divisors = [c for c in range(1, models_per_device + 1) if models_per_device % c == 0]
  return min(divisors, key=lambda c: (abs(c - MODEL_CHUNK), -c))


def _in_chunks(fn, tree, devices: int, chunk: int):
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


def model_mesh(devices: int) -> jax.sharding.Mesh:
  """The first `devices` local devices along one axis, "model"."""
  return jax.sharding.Mesh(np.array(jax.local_devices()[:devices]), ("model",))


def one_model_per_device(fn, devices: int):
  """fn of one model, which when vmapped over a segment's model axis (devices
  contiguous blocks) runs one model per device at a time: lax.map over each
  device's models, and fn unbatched on each device (shard_map).

  Inside the segment's vmap a function sees one model and cannot loop over
  the models itself; custom_vmap hands it the model axis. On 2 CPU cores the
  curvature probe of 4 models per device at once cost 1.63x its gradient
  count, one at a time 1.34x: one model's Lanczos basis stays in cache
  (benchmarks/probe_cost.py). Unbatched, rather than vmapped over a device's
  block of one, a batch-norm MLP's Hessian-vector product took 0.76 ms, not
  1.07 ms: XLA compiles a vmap of one into slower code.
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
      return jax.shard_map(block, mesh=model_mesh(devices),
                           in_specs=(model, jax.sharding.PartitionSpec()), out_specs=model,
                           check_vma=False)(batched_leaves, shared)

    out = _in_chunks(on_devices, own, devices, 1)
    return out, jax.tree_util.tree_map(lambda _: True, out)

  return batched_fn


def _write_if_due(buf, chunk, every_chunks: int, compute):
  """Writes compute() into slot (chunk+1)/every-1 of buf when that chunk ends a cadence."""
  slot = (chunk + 1) // every_chunks - 1
  write = lambda b: jax.tree_util.tree_map(lambda b_, v: b_.at[slot].set(v), b, compute())
  if every_chunks == 1:
    return write(buf)
  return jax.lax.cond((chunk + 1) % every_chunks == 0, write, lambda b: b, buf)
