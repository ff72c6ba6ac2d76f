"""The training loop of one compiled group, as pure functions of (state, key, data).

``make_loop(spec)`` returns the group's functions, closed over its static
config: ``init`` (models from seed indices and hyperparameters), ``step`` (one
update of one model) and ``segment``, which is

  jit(vmap over models(scan over chunks(scan over scan_length steps;
                                        record kinds when due))).

The chunk counter comes from the outer scan, so it is never a batched value
and ``lax.cond`` on it runs one branch. Minibatch indices are drawn inside the
compiled segment, once per seed index, and nothing crosses to the host until
the segment ends.

Step numbering: step t (1-based) is the t-th update. The per-step loss of
step t is the minibatch loss before that update; a record kind due "at step
t" runs at the end of a chunk and reads the model right after update t
(icsjax.state.Moment: the state after it, and the update itself). Kinds
``at_init`` also record step 0, in the first segment only, ahead of its other
records: the initial state, with update 1 as the update. Every segment
returns their slot for step 0; `without_step_0` drops it after the first.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import tree_utils

from icsjax import keys
from icsjax import models
from icsjax import optim
from icsjax import placement
from icsjax import records as records_lib
from icsjax import shuffle
from icsjax.forward import model_fns, tap_moments
from icsjax.spec import GroupSpec
from icsjax.state import Moment, ModelState, StepInternals


class Loop(NamedTuple):
  init: Callable     # (model seed indices (K,), hparams {name: (K,)}) -> ModelState, leading K
  step: Callable     # one model: (state, hp, x, y, step) -> (state, metrics, StepInternals)
  segment: Callable  # jit: (states, hparams, model seed indices, data, start_step)
                     #      -> (states, {kind: records})


def segment_batch_indices(key, start_step, num_steps: int, batch_size: int, num_train: int):
  """Minibatch indices of steps start_step+1 .. start_step+num_steps, shape (steps, batch).

  Examples are drawn epoch by epoch: epoch e is a permutation keyed by
  fold_in(key, e) (icsjax.shuffle), read as one stream, so batches cross epoch
  ends and any batch size works.
  """
  pos = start_step * batch_size + jnp.arange(num_steps * batch_size)
  first_epoch = (start_step * batch_size) // num_train
  spanned = (num_steps * batch_size + num_train - 1) // num_train + 1
  pivots, salts = shuffle.round_keys(key, first_epoch + jnp.arange(spanned), num_train)
  idx = shuffle.permute(pos % num_train, pos // num_train - first_epoch, pivots, salts,
                        num_train)
  return idx.reshape(num_steps, batch_size)


def init_model(spec: GroupSpec, seed_index, hp) -> ModelState:
  """One model's state before its first step. Models of one seed index, init
  and init_gain share their initial weights in every layer they have in common
  (Flax derives each layer's key from its name); another init or gain draws
  from the same key, so their weights differ but stay paired."""
  base = spec.run.base_seed
  variables = spec.model.init({"params": keys.seed_key(base, seed_index, keys.INIT)},
                              jnp.zeros((1,) + spec.input_shape), train=False, hp=hp)
  params = models.scale_kernels(variables["params"], hp["init_gain"])
  return ModelState(params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=optim.make(spec.static["optimizer"], hp).init(params),
                    noise_key=keys.seed_key(base, seed_index, keys.NOISE),
                    diverged_step=jnp.zeros((), jnp.int32))


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def _set_diverged(state: ModelState, bad, step) -> ModelState:
  first = bad & (state.diverged_step == 0)
  return state.replace(diverged_step=jnp.where(first, jnp.asarray(step, jnp.int32),
                                               state.diverged_step))


def _nan_if(flag, tree):
  return tree_utils.tree_where(flag, tree_utils.tree_full_like(tree, jnp.nan), tree)


def _write_if_due(buf, slot, due, compute):
  """Writes compute() into buf[slot] when due (an unbatched bool: one branch runs).

  Only the value passes through the cond, the buffer never: the write stays an
  in-place update of the scan's carry."""
  slot = jnp.maximum(slot, 0)
  kept = jax.tree_util.tree_map(lambda b: b[slot], buf)
  value = jax.lax.cond(due, compute, lambda: kept)
  return jax.tree_util.tree_map(lambda b, v: b.at[slot].set(v), buf, value)


def _traced_once(fn):
  """fn, jitted and inlined where it is called: its Python runs once per types
  of its arguments, and every later call reuses that trace."""
  jitted = jax.jit(fn, inline=True)

  def call(*args):
    # The trace cache keys on the context mesh, which some of JAX's transforms
    # leave unset and others set empty: set, it is the same for every call.
    with jax.sharding.use_abstract_mesh(jax.sharding.get_abstract_mesh()):
      return jitted(*args)
  return call


def make_loop(spec: GroupSpec) -> Loop:
  """The group's init, step and segment functions."""
  run = spec.run
  kinds = records_lib.active(run)

  def step(state: ModelState, hp, x, y, t):
    """Update t (1-based) of one model; what a caller leaves unused, XLA does not compute.

    Divergence costs one scalar test per step: a non-finite loss sets
    ``diverged_step``. Parameters and statistics are checked once per chunk
    (in ``segment``), since reducing over every leaf each step is costly. A
    diverged model keeps training on its non-finite values, which cannot
    reach other models, and reads NaN.
    """
    fns = model_fns(spec, hp)
    # Drawn apart from the loss, so that the probes of this update reuse the draw.
    noise = fns.draw_noise(state.params, state.batch_stats, x, fns.noise_key(state, t, keys.STEP))
    (loss, (acc, taps, new_stats)), grads = jax.value_and_grad(fns.loss, has_aux=True)(
        state.params, state.batch_stats, x, y, noise)
    tx = optim.make(spec.static["optimizer"], hp)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    inside = StepInternals(params=state.params, batch_stats=state.batch_stats, x=x, y=y,
                           noise=noise, loss=loss, grads=grads, updates=updates,
                           moments=tap_moments(taps, spec.max_units))
    state = _set_diverged(state, ~jnp.isfinite(loss), t).replace(
        params=new_params, batch_stats=new_stats, opt_state=opt_state)
    metrics = {"train_loss": loss}
    if acc is not None:
      metrics["train_accuracy"] = acc
    return state, _nan_if(state.diverged_step > 0, metrics), inside

  traced_step = _traced_once(step)  # in the chunks' scan, their last step and first_pass
  # Each kind's compute, traced once per group and reused for the buffers'
  # shapes, the chunk body and each batching of it (the curvature probe was
  # traced four times, 3/4 of a depth-6 group's tracing).
  computes = {k.name: _traced_once(functools.partial(
      lambda kind, hp, inputs: kind.compute(spec, model_fns(spec, hp), inputs), k))
              for k in kinds}

  def compute(kind, hp, at: Moment):
    """One kind's records of one model, placed as the kind asks."""
    fn = computes[kind.name]
    if kind.per_device_inputs is None:
      return fn(hp, at)
    # The inputs pass explicitly (no closure over the models' values), so that a
    # CPU can hand each device its models one at a time.
    if spec.probes_in_sequence:
      fn = placement.one_model_per_device(fn, spec.devices, spec.first_device)
    return fn(hp, kind.per_device_inputs(spec, model_fns(spec, hp), at))

  def due(at: Moment, hp, kinds=kinds) -> dict:
    """{kind: thunk computing its records of `at`}, NaN for a diverged model."""
    diverged = at.state.diverged_step > 0
    return {k.name: lambda k=k: _nan_if(diverged, compute(k, hp, at)) for k in kinds}

  def segment_one(state: ModelState, hp, indices, data, start_step):
    """Train one model for a segment. indices: (segment_steps, batch) minibatch indices.

    The scan over chunks makes one pass more, first: pass -1 trains nothing and,
    in the first segment, records step 0 of the kinds that record it (the
    initial state, with update 1 on step 1's minibatch as its update). Each
    kind's code is then compiled once, in the chunk body, instead of a second
    time in a program of its own for step 0.
    """
    n = run.scan_length
    chunks = run.segment_steps // n
    idx = indices.reshape(chunks, n, -1)
    first_segment = start_step == 0

    def step_at(state, t, batch_idx):
      return traced_step(state, hp, data.train_x[batch_idx], data.train_y[batch_idx], t)

    def one_step(state, xs):
      state, metrics, _ = step_at(state, *xs)
      return state, metrics

    def first_pass():  # traced for shapes only
      s, metrics, inside = step_at(state, start_step + 1, idx[0, 0])
      at = Moment(state=s, step=start_step + 1, update=inside, data=data)
      return {name: f() for name, f in due(at, hp).items()}, metrics
    record_shapes, metric_shapes = jax.eval_shape(first_pass)

    def train(state, steps, chunk_idx):
      return jax.lax.scan(one_step, state, (steps, chunk_idx))

    def skip(state, steps, chunk_idx):
      return state, jax.tree_util.tree_map(
          lambda m: jnp.zeros(steps.shape + m.shape, m.dtype), metric_shapes)

    def slot_and_due(kind, j):
      """Where kind writes in pass j, and whether it does (unbatched: one branch runs)."""
      every = kind.every(run) // n
      cadence_ends = (j + 1) % every == 0
      if kind.at_init:  # slot 0 is step 0
        return (j + 1) // every, cadence_ends & ((j >= 0) | first_segment)
      return (j + 1) // every - 1, cadence_ends & (j >= 0)

    def one_chunk(carry, xs):
      state, bufs = carry
      j, chunk_idx = xs
      step_0 = j < 0
      steps = start_step + j * n + 1 + jnp.arange(n)
      # Record kinds read a chunk's last step only, so that step alone keeps its
      # batch moments, gradient and update.
      trained, metrics = jax.lax.cond(step_0, skip, train, state, steps[:-1], chunk_idx[:-1])
      last_step = jnp.where(step_0, start_step + 1, steps[-1])
      last_idx = jnp.where(step_0, chunk_idx[0], chunk_idx[-1])
      updated, last, inside = step_at(trained, last_step, last_idx)
      metrics = jax.tree_util.tree_map(lambda m, l: jnp.concatenate([m, l[None]]), metrics, last)
      end = start_step + (j + 1) * n
      updated = _set_diverged(updated, ~_all_finite((updated.params, updated.batch_stats)), end)
      # Pass -1 keeps the state it was given: its update is only read, not applied.
      state = tree_utils.tree_where(step_0, trained, updated)
      thunks = due(Moment(state=state, step=end, update=inside, data=data), hp)
      bufs = {k.name: _write_if_due(bufs[k.name], *slot_and_due(k, j), thunks[k.name])
              for k in kinds}
      return (state, bufs), metrics

    # Zeros that depend on this model's state: under the segment's vmap the buffers
    # are then batched from the start, and scan batches its body (every kind
    # included) in one pass instead of a second one for the carry that turned batched.
    zero = state.diverged_step * 0
    bufs = {}
    for name, shapes in record_shapes.items():
      kind = records_lib.BY_NAME[name]
      length = run.segment_steps // kind.every(run) + kind.at_init
      bufs[name] = jax.tree_util.tree_map(
          lambda s: jnp.zeros((length,) + s.shape, s.dtype) + zero.astype(s.dtype), shapes)
    passes = (jnp.arange(-1, chunks), jnp.concatenate([idx[:1], idx]))
    (state, bufs), metrics = jax.lax.scan(one_chunk, (state, bufs), passes)
    return state, {records_lib.PER_STEP: jax.tree_util.tree_map(lambda m: m[1:].reshape(-1),
                                                                metrics), **bufs}

  def init(model_seeds, hp) -> ModelState:
    """Not jitted: op by op, the compiled pieces are shared by every group, which
    costs less than compiling one init program per group."""
    # The optimizer state keeps the hyperparameters it was built with; copies, so
    # that donating the state to a segment cannot delete the caller's arrays.
    return jax.vmap(lambda s, h: init_model(spec, s, h))(
        model_seeds, jax.tree_util.tree_map(jnp.copy, hp))

  def over_models(one, states, hp, model_seeds, start_step, num_steps, *shared):
    """one(state, hp, indices, *shared) vmapped over the models, each given the
    minibatch indices of steps start_step+1 .. start_step+num_steps of its seed
    index (drawn once per seed index and shared by all its models)."""
    seed_keys = jax.vmap(lambda s: keys.seed_key(run.base_seed, s, keys.DATA))(
        jnp.arange(run.seeds))
    per_seed = jax.vmap(lambda k: segment_batch_indices(
        k, start_step, num_steps, spec.batch_size, spec.num_train))(seed_keys)
    models = jax.vmap(one, in_axes=(0, 0, 0) + (None,) * len(shared))
    xs = (states, hp, per_seed[model_seeds])
    if not spec.model_chunk:
      return models(*xs, *shared)
    return placement.in_chunks(lambda xs: models(*xs, *shared), xs, spec.devices,
                               spec.model_chunk)

  def segment(states, hp, model_seeds, data, start_step):
    return over_models(segment_one, states, hp, model_seeds, start_step, run.segment_steps,
                       data, start_step)

  return Loop(init=init, step=step, segment=jax.jit(segment, donate_argnums=0))
