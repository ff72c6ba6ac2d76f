"""Test-time behaviour of one model (docs/measurements.md, "Test time"), as pure
functions run inside the compiled loop at the ``test_time_every`` cadence.

Statistics modes, per test batch size b, over the first floor(n_test / b) * b
test examples (every mode at one b reads the same examples, so they pair):
- ``batch``: each test batch of b normalised by its own statistics (train mode,
  no noise, running statistics untouched);
- ``running``: the running (EMA) statistics, i.e. the default eval mode;
- ``population``: Ioffe & Szegedy's Alg. 2, recomputed from the current
  weights: over ``population_batches`` training minibatches of the training
  batch size (the first population_batches * batch_size training examples, in
  order, from the first again where the set runs out), each forwarded in train mode as in training (earlier layers
  normalised by that batch's statistics, no noise), the mean of the batch means
  and m/(m-1) times the mean of the biased batch variances, m the size of a
  unit's normalisation set (batch x positions); lp kinds: the mean batch lp scale.

Shifted inputs (icsjax.shifts: computed once per run from the raw test inputs,
standardised as in training) with BN adaptation (Schneider et al. 2020), per adaptation size n:
statistics of n shifted examples mixed with the running ones in one forward
pass, mean = (N mu_s + n mu_t)/(N + n) and likewise for the variance; the
adapted statistics are those of the evaluated batch itself (``adapt_set=
"test_batch"``, as in the paper) or of the first n training examples under the
same shift (``"separate"``). ``adapt`` kinds: none (running statistics), full,
mean_only, var_only. The corruption ``clean`` is the unshifted test set.

Where a unit's normalisation set has a single element (a dense batch norm at
batch 1) batch statistics are undefined: such entries hold ``UNDEFINED_FILL``
and the coordinates ``stats_mode_defined`` / ``shift_defined`` say which.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icsjax.losses import per_example
from icsjax.norms import BATCH_NORM_KINDS, LP_ORDER, batch_moments, unbiased

STATS_MODES = ("batch", "running", "population")
ADAPT_KINDS = ("none", "full", "mean_only", "var_only")
UNDEFINED_FILL = -1.0  # not NaN: NaN marks a diverged model


# --- static facts (shapes only) ------------------------------------------------

def batch_statistics_defined(spec, batch: int) -> bool:
  """False where a batch norm would normalise a unit over a single element."""
  return spec.static["norm"] not in BATCH_NORM_KINDS or min(spec.norm_set_sizes(batch)) > 1


def stats_mode_defined(spec, batch_sizes) -> list[list[bool]]:
  """(stats_mode, test_batch_size): whether each entry is defined."""
  return [[mode != "batch" or batch_statistics_defined(spec, b) for b in batch_sizes]
          for mode in STATS_MODES]


def shift_defined(spec, adapt_sizes, priors) -> list[list[list[bool]]]:
  """(adapt, adapt_n, adapt_prior): a variance from one element per unit (full or
  var_only adaptation with N = 0) is undefined."""
  return [[[kind in ("none", "mean_only") or prior > 0 or batch_statistics_defined(spec, n)
            for prior in priors] for n in adapt_sizes] for kind in ADAPT_KINDS]


def adapt_weights(n: int, priors) -> jax.Array:
  """(adapting kinds x priors, 2): the (mean, variance) weights n / (N + n) of the
  batch statistics for full, mean_only and var_only adaptation, for each N."""
  rows = []
  for kind in ADAPT_KINDS[1:]:
    for prior in priors:
      w = n / (prior + n)
      rows.append((w if kind != "var_only" else 0.0, w if kind != "mean_only" else 0.0))
  return jnp.asarray(rows, jnp.float32)


# --- pieces ----------------------------------------------------------------------

def map_batches(fn, xs, batch: int, chunk: int):
  """fn over consecutive batches of `batch` rows of every leaf of xs (rows after
  the last whole batch are left out), `chunk` batches at a time; (batches, ...)."""
  rows = jax.tree_util.tree_leaves(xs)[0].shape[0]
  nb = rows // batch
  xs = jax.tree_util.tree_map(lambda a: a[:nb * batch].reshape((nb, batch) + a.shape[1:]), xs)
  return jax.lax.map(fn, xs, batch_size=min(chunk, nb))


def batch_mean(tree):
  return jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), tree)


def population_statistics(spec, fns, params, batch_stats, train_x):
  """Ioffe & Szegedy's Alg. 2 running-statistics tree from the current weights."""
  norm = spec.static["norm"]
  if norm not in BATCH_NORM_KINDS:
    return batch_stats
  p = LP_ORDER.get(norm)
  centre = p is None or spec.static["lp_center"]
  b = spec.batch_size

  def moments(x):
    _, taps, _ = fns.apply(params, batch_stats, x, train=True)
    out = []
    for pre, _ in taps:
      mean, scale = batch_moments(pre, p, centre)
      out.append((mean, unbiased(scale, pre) if p is None else scale))
    return out

  batches = spec.run.population_batches
  rows = jnp.arange(batches * b) % train_x.shape[0]  # wraps around a small training set
  per_batch = jax.lax.map(moments, train_x[rows].reshape((batches, b) + train_x.shape[1:]))
  names = spec.running_stat_names
  return {f"norm_{i}": {names[0]: jnp.mean(mean, 0), names[1]: jnp.mean(scale, 0)}
          for i, (mean, scale) in enumerate(per_batch)}


def eval_per_example(spec, fns, params, batch_stats, x, y) -> dict:
  """Eval-mode metrics of every example under the statistics `batch_stats`."""
  chunk = spec.run.eval_batch_chunk * spec.batch_size
  def one(xy):
    out, _, _ = fns.apply(params, batch_stats, xy[0], train=False)
    return per_example(spec.task, out, xy[1])
  return jax.tree_util.tree_map(lambda a: a.reshape(-1), map_batches(one, (x, y), 1, chunk))


# --- records -----------------------------------------------------------------------

def stats_mode_records(spec, fns, state, data) -> dict:
  """stats_mode_{loss, accuracy}: (stats_mode, test_batch_size)."""
  params, stats = state.params, state.batch_stats
  population = population_statistics(spec, fns, params, stats, data.train_x)
  both = jax.tree_util.tree_map(lambda r, p: jnp.stack([r, p]), stats, population)
  # one vmapped program for both: each distinct forward pass costs compile time
  per_mode = jax.vmap(lambda s: eval_per_example(spec, fns, params, s, data.test_x,
                                                 data.test_y), axis_size=2)(both)
  per_mode = {m: jax.tree_util.tree_map(lambda a, i=i: a[i], per_mode)
              for i, m in enumerate(("running", "population"))}
  defined = stats_mode_defined(spec, spec.run.test_batch_sizes)
  def one_batch(xy):  # normalised by its own statistics
    out, _, _ = fns.apply(params, stats, xy[0], train=True)
    return batch_mean(per_example(spec.task, out, xy[1]))

  columns = []
  for j, b in enumerate(spec.run.test_batch_sizes):
    used = (spec.num_test // b) * b
    column = {m: batch_mean(jax.tree_util.tree_map(lambda a: a[:used], v))
              for m, v in per_mode.items()}
    if defined[0][j]:  # an undefined batch mode is never traced (its variance is 0/0)
      column["batch"] = batch_mean(map_batches(one_batch, (data.test_x, data.test_y), b,
                                               spec.run.eval_batch_chunk))
    columns.append({metric: jnp.stack([
        column[mode][metric] if defined[i][j] else jnp.float32(UNDEFINED_FILL)
        for i, mode in enumerate(STATS_MODES)]) for metric in column["running"]})
  return {f"stats_mode_{metric}": jnp.stack([c[metric] for c in columns], axis=-1)
          for metric in columns[0]}


def adapted_metrics(spec, fns, params, batch_stats, test_sets, test_ys, adapt_sets, n,
                    weights) -> dict:
  """Mean metrics (shift, variant) of the test sets in batches of n, normalised with
  statistics adapted on n examples by each (mean, variance) weight pair of
  `weights`: those of the batch itself (adapt_sets None) or of adapt_sets[k]."""
  if adapt_sets is None:  # each evaluated batch adapts on itself, in its own forward pass
    variants = jnp.broadcast_to(weights, (test_sets.shape[0],) + weights.shape)
    forward = lambda x, w: fns.adapted(params, batch_stats, x, w)[0]
  else:  # one forward over the adaptation set keeps the mixed statistics, layer by layer
    mixed = lambda a_k, w: fns.adapted(params, batch_stats, a_k, w)[1]
    variants = jax.vmap(lambda a_k: jax.vmap(lambda w: mixed(a_k, w))(weights))(adapt_sets)
    forward = lambda x, stats: fns.apply(params, stats, x, train=False)[0]

  def one_batch(xy):
    x, y = (jnp.swapaxes(a, 0, 1) for a in xy)  # (shifts, n, ...)
    one = lambda x_k, y_k, v: batch_mean(per_example(spec.task, forward(x_k, v), y_k))
    return jax.vmap(lambda x_k, y_k, v_k: jax.vmap(lambda v: one(x_k, y_k, v))(v_k))(
        x, y, variants)
  xs = (jnp.swapaxes(test_sets, 0, 1), jnp.swapaxes(test_ys, 0, 1))
  return batch_mean(map_batches(one_batch, xs, n, spec.run.eval_batch_chunk))


def shift_records(spec, fns, state, data) -> dict:
  """shift_{loss, accuracy}: (corruption, severity, adapt, adapt_n, adapt_prior)."""
  run = spec.run
  params, stats = state.params, state.batch_stats
  test_sets, adapt_sets = data.shifted_test_x, data.shifted_adapt_x
  defined = shift_defined(spec, run.adapt_sizes, run.adapt_priors)
  priors = len(run.adapt_priors)
  per_n = []
  for j, n in enumerate(run.adapt_sizes):
    weights = jnp.concatenate([jnp.zeros((1, 2)), adapt_weights(n, run.adapt_priors)])
    got = adapted_metrics(spec, fns, params, stats, test_sets, data.shifted_test_y,
                          None if adapt_sets is None else adapt_sets[:, :n], n, weights)
    per_n.append({})
    for metric, v in got.items():  # v: (shifts, 1 + adapting kinds x priors)
      none = jnp.broadcast_to(v[:, :1], (v.shape[0], priors))
      kinds = jnp.concatenate([none, v[:, 1:]], axis=1).reshape(v.shape[0], len(ADAPT_KINDS),
                                                                priors)
      mask = jnp.asarray([[defined[k][j][i] for i in range(priors)]
                          for k in range(len(ADAPT_KINDS))])
      per_n[-1][metric] = jnp.where(mask, kinds, UNDEFINED_FILL)
  out = {}
  severities = len(run.shift_severities)
  for metric in per_n[0]:
    v = jnp.stack([p[metric] for p in per_n], axis=2)  # (shifts, adapt, adapt_n, adapt_prior)
    clean = jnp.broadcast_to(v[:1], (severities,) + v.shape[1:])[None]
    shifted = v[1:].reshape((-1, severities) + v.shape[1:])  # synthetic, then TFDS
    out[f"shift_{metric}"] = jnp.concatenate([clean, shifted])
  return out


def records(spec, fns, at) -> dict:
  """Every test-time record of one model after update `at.step`."""
  out = stats_mode_records(spec, fns, at.state, at.data)
  if spec.run.adapt_sizes:
    out.update(shift_records(spec, fns, at.state, at.data))
  return out
