"""Test-time behaviour of one model (DESIGN.md B.7), as pure functions run inside
the compiled loop at the ``test_time_every`` cadence.

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

Shifted inputs (icsjax.shifts, from raw test inputs, standardised as in
training) with BN adaptation (Schneider et al. 2020), per adaptation size n:
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

import math

import jax
import jax.numpy as jnp

from icsjax import shifts
from icsjax import tfds_data
from icsjax import train as train_lib  # a module object: train imports this module too
from icsjax.norms import ADAPT_MEAN_WEIGHT, ADAPT_SCALE_WEIGHT, LP_ORDER, lp_scale
from icsjax.study import BATCH_NORM_KINDS

STATS_MODES = ("batch", "running", "population")
ADAPT_KINDS = ("none", "full", "mean_only", "var_only")
CLEAN = "clean"
TFDS_PREFIX = "tfds_"  # corruption names of TFDS corrupted test sets (CIFAR-10-C)
UNDEFINED_FILL = -1.0  # not NaN: NaN marks a diverged model


# --- static facts (shapes only) ------------------------------------------------

def norm_set_sizes(program, batch: int) -> tuple[int, ...]:
  """Elements in each normalised layer's per-unit normalisation set at `batch`
  (batch x positions); nothing is computed."""
  init = lambda: program.model.init_with_output(
      {"params": jax.random.PRNGKey(0)}, jnp.zeros((batch,) + tuple(program.input_shape)),
      train=False, hp={})
  (_, taps), _ = jax.eval_shape(init)
  return tuple(math.prod(pre.shape[:-1]) for pre, _ in taps)


def batch_statistics_defined(program, batch: int) -> bool:
  """False where a batch norm would normalise a unit over a single element."""
  return (program.static["norm"] not in BATCH_NORM_KINDS
          or min(norm_set_sizes(program, batch)) > 1)


def stats_mode_defined(program, batch_sizes) -> list[list[bool]]:
  """(stats_mode, test_batch_size): whether each entry is defined."""
  return [[mode != "batch" or batch_statistics_defined(program, b) for b in batch_sizes]
          for mode in STATS_MODES]


def shift_defined(program, adapt_sizes, priors) -> list[list[list[bool]]]:
  """(adapt, adapt_n, adapt_prior): a variance from one element per unit (full or
  var_only adaptation with N = 0) is undefined."""
  return [[[kind in ("none", "mean_only") or prior > 0 or batch_statistics_defined(program, n)
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

def per_example(task: str, outputs, y) -> dict:
  """{loss, accuracy (classification)} of each example."""
  loss, acc = jax.vmap(lambda o, t: train_lib.task_loss(o[None], t[None], task))(outputs, y)
  return {"loss": loss} if acc is None else {"loss": loss, "accuracy": acc}


def map_batches(fn, xs, batch: int, chunk: int):
  """fn over consecutive batches of `batch` rows of every leaf of xs (rows after
  the last whole batch are left out), `chunk` batches at a time; (batches, ...)."""
  rows = jax.tree_util.tree_leaves(xs)[0].shape[0]
  nb = rows // batch
  xs = jax.tree_util.tree_map(lambda a: a[:nb * batch].reshape((nb, batch) + a.shape[1:]), xs)
  return jax.lax.map(fn, xs, batch_size=min(chunk, nb))


def batch_mean(tree):
  return jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), tree)


def population_statistics(program, params, batch_stats, hp, train_x):
  """Ioffe & Szegedy's Alg. 2 running-statistics tree from the current weights."""
  norm = program.static["norm"]
  if norm not in BATCH_NORM_KINDS:
    return batch_stats
  p = LP_ORDER.get(norm)
  centre = p is None or program.static["lp_center"]
  b = program.static["batch_size"]

  def moments(x):
    _, taps, _ = program.apply(params, batch_stats, x, hp, train=True)
    out = []
    for pre, _ in taps:
      axes = tuple(range(pre.ndim - 1))
      mean = jnp.mean(pre, axis=axes)
      centred = pre - mean if centre else pre
      if p is None:
        m = math.prod(pre.shape[:-1])
        out.append((mean, jnp.mean(jnp.square(centred), axis=axes) * (m / (m - 1))))
      else:
        out.append((mean, lp_scale(centred, axes, p)))
    return out

  batches = program.run.population_batches
  rows = jnp.arange(batches * b) % train_x.shape[0]  # wraps around a small training set
  per_batch = jax.lax.map(moments, train_x[rows].reshape((batches, b) + train_x.shape[1:]))
  names = program.running_stat_names
  return {f"norm_{i}": {names[0]: jnp.mean(mean, 0), names[1]: jnp.mean(scale, 0)}
          for i, (mean, scale) in enumerate(per_batch)}


def eval_per_example(program, params, batch_stats, hp, x, y) -> dict:
  """Eval-mode metrics of every example under the statistics `batch_stats`."""
  chunk = program.run.eval_batch_chunk * program.static["batch_size"]
  def one(xy):
    out, _, _ = program.apply(params, batch_stats, xy[0], hp, train=False)
    return per_example(program.task, out, xy[1])
  return jax.tree_util.tree_map(lambda a: a.reshape(-1), map_batches(one, (x, y), 1, chunk))


# --- records -----------------------------------------------------------------------

def stats_mode_records(program, state, hp, data) -> dict:
  """stats_mode_{loss, accuracy}: (stats_mode, test_batch_size)."""
  params, stats = state.params, state.batch_stats
  population = population_statistics(program, params, stats, hp, data.train_x)
  both = jax.tree_util.tree_map(lambda r, p: jnp.stack([r, p]), stats, population)
  # one vmapped program for both: each distinct forward pass costs compile time
  per_mode = jax.vmap(lambda s: eval_per_example(program, params, s, hp, data.test_x,
                                                 data.test_y), axis_size=2)(both)
  per_mode = {m: jax.tree_util.tree_map(lambda a, i=i: a[i], per_mode)
              for i, m in enumerate(("running", "population"))}
  defined = stats_mode_defined(program, program.run.test_batch_sizes)
  def one_batch(xy):  # normalised by its own statistics
    out, _, _ = program.apply(params, stats, xy[0], hp, train=True)
    return batch_mean(per_example(program.task, out, xy[1]))

  columns = []
  for j, b in enumerate(program.run.test_batch_sizes):
    used = (program.num_test // b) * b
    column = {m: batch_mean(jax.tree_util.tree_map(lambda a: a[:used], v))
              for m, v in per_mode.items()}
    if defined[0][j]:  # an undefined batch mode is never traced (its variance is 0/0)
      column["batch"] = batch_mean(map_batches(one_batch, (data.test_x, data.test_y), b,
                                               program.run.eval_batch_chunk))
    columns.append({metric: jnp.stack([
        column[mode][metric] if defined[i][j] else jnp.float32(UNDEFINED_FILL)
        for i, mode in enumerate(STATS_MODES)]) for metric in column["running"]})
  return {f"stats_mode_{metric}": jnp.stack([c[metric] for c in columns], axis=-1)
          for metric in columns[0]}


def shifted_sets(run, data, raw_x, draw: int):
  """(1 + corruptions x severities, n, ...) standardised inputs: clean first, then
  each corruption at each severity, severity varying fastest."""
  key = shifts.shift_key(run.base_seed, draw)
  sets = [data.standardise(raw_x)]
  for c, name in enumerate(run.shift_corruptions):
    for severity in run.shift_severities:
      sets.append(data.standardise(shifts.corrupt(
          raw_x, name, severity, dataset=data.name, feature_mean=data.feature_mean,
          feature_inv_std=data.feature_inv_std, key=jax.random.fold_in(key, c))))
  return jnp.stack(sets)


def with_shifted_sets(data, run, tfds_data_dir: str = ""):
  """`data` with its shifted test sets, computed once on the device (they depend
  on neither model nor step, and compiling them into every group's segment cost
  more than the rest of the shift evaluation); then the TFDS corrupted test sets
  (``tfds_corruptions``), read from disk and standardised alike. For
  adapt_set='separate', the synthetic shifts of the first max(adapt_sizes)
  training examples too (a TFDS corrupted set has no training split: its
  separate adaptation set is the clean one)."""
  if not (run.test_time_every and run.adapt_sizes):
    return data
  test = jax.jit(lambda d: shifted_sets(run, d, d.raw_test_x, draw=0))(data)
  labels = [jnp.broadcast_to(data.test_y, (test.shape[0],) + data.test_y.shape)]
  loaded = [tfds_data.load_corrupted_test(data.name, name, severity, tfds_data_dir or None)
            for name in run.tfds_corruptions for severity in run.shift_severities]
  for x, y in loaded:
    if x.shape != tuple(data.raw_test_x.shape):
      raise ValueError(f"a {data.name} corrupted test set holds {x.shape} images where the "
                       f"test set holds {tuple(data.raw_test_x.shape)}")
  if loaded:
    test = jnp.concatenate([test, data.standardise(jnp.stack([x for x, _ in loaded]))])
    labels.append(jnp.stack([y for _, y in loaded]))
  adapt = None
  if run.adapt_set == "separate":
    adapt = jax.jit(lambda d: shifted_sets(run, d, d.raw_train_x[:max(run.adapt_sizes)],
                                           draw=1))(data)
    adapt = jnp.concatenate([adapt] + [adapt[:1]] * len(loaded))
  return data.replace(shifted_test_x=test, shifted_test_y=jnp.concatenate(labels),
                      shifted_adapt_x=adapt)


def adapted_metrics(program, params, batch_stats, hp, test_sets, test_ys, adapt_sets, n,
                    weights) -> dict:
  """Mean metrics (shift, variant) of the test sets in batches of n, normalised with
  statistics adapted on n examples by each (mean, variance) weight pair of
  `weights`: those of the batch itself (adapt_sets None) or of adapt_sets[k]."""
  adapted = lambda w: {**hp, ADAPT_MEAN_WEIGHT: w[0], ADAPT_SCALE_WEIGHT: w[1]}
  variables = lambda s: {"params": params, "batch_stats": s}
  if adapt_sets is None:  # each evaluated batch adapts on itself, in its own forward pass
    variants = jnp.broadcast_to(weights, (test_sets.shape[0],) + weights.shape)
    forward = lambda x, w: program.model.apply(variables(batch_stats), x, train=False,
                                               hp=adapted(w))[0]
  else:  # one forward over the adaptation set keeps the mixed statistics, layer by layer
    def mixed(a_k, w):
      return program.model.apply(variables(batch_stats), a_k, train=False, hp=adapted(w),
                                 mutable=["batch_stats"])[1]["batch_stats"]
    variants = jax.vmap(lambda a_k: jax.vmap(lambda w: mixed(a_k, w))(weights))(adapt_sets)
    forward = lambda x, stats: program.model.apply(variables(stats), x, train=False, hp=hp)[0]

  def one_batch(xy):
    x, y = (jnp.swapaxes(a, 0, 1) for a in xy)  # (shifts, n, ...)
    one = lambda x_k, y_k, v: batch_mean(per_example(program.task, forward(x_k, v), y_k))
    return jax.vmap(lambda x_k, y_k, v_k: jax.vmap(lambda v: one(x_k, y_k, v))(v_k))(
        x, y, variants)
  xs = (jnp.swapaxes(test_sets, 0, 1), jnp.swapaxes(test_ys, 0, 1))
  return batch_mean(map_batches(one_batch, xs, n, program.run.eval_batch_chunk))


def shift_records(program, state, hp, data) -> dict:
  """shift_{loss, accuracy}: (corruption, severity, adapt, adapt_n, adapt_prior)."""
  run = program.run
  params, stats = state.params, state.batch_stats
  test_sets, adapt_sets = data.shifted_test_x, data.shifted_adapt_x
  defined = shift_defined(program, run.adapt_sizes, run.adapt_priors)
  priors = len(run.adapt_priors)
  per_n = []
  for j, n in enumerate(run.adapt_sizes):
    weights = jnp.concatenate([jnp.zeros((1, 2)), adapt_weights(n, run.adapt_priors)])
    got = adapted_metrics(program, params, stats, hp, test_sets, data.shifted_test_y,
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


def records(program, state, hp, data) -> dict:
  """Every test-time record of one model at one evaluation."""
  out = stats_mode_records(program, state, hp, data)
  if program.run.adapt_sizes:
    out.update(shift_records(program, state, hp, data))
  return out


def corruption_coords(run) -> list[str]:
  """The corruption axis: clean, each synthetic shift, each TFDS corrupted set (tfds_*)."""
  return [CLEAN, *run.shift_corruptions, *(TFDS_PREFIX + n for n in run.tfds_corruptions)]


def record_coords(program) -> dict:
  """{name: (dims, values)}: the test-time records' axes, and masks of their defined
  entries (False: batch statistics of a one-element set, holding UNDEFINED_FILL)."""
  run = program.run
  sizes, priors = list(run.test_batch_sizes), [float(p) for p in run.adapt_priors]
  coords = {"stats_mode": (["stats_mode"], list(STATS_MODES)),
            "test_batch_size": (["test_batch_size"], sizes),
            "stats_mode_defined": (["stats_mode", "test_batch_size"],
                                   stats_mode_defined(program, sizes))}
  if run.adapt_sizes:
    coords.update({
        "corruption": (["corruption"], corruption_coords(run)),
        "severity": (["severity"], list(run.shift_severities)),
        "adapt": (["adapt"], list(ADAPT_KINDS)),
        "adapt_n": (["adapt_n"], list(run.adapt_sizes)),
        "adapt_prior": (["adapt_prior"], priors),
        "shift_defined": (["adapt", "adapt_n", "adapt_prior"],
                          shift_defined(program, run.adapt_sizes, priors))})
  return coords


def record_attrs(program) -> dict:
  """How the test-time records were measured, for the records' attributes."""
  run, b = program.run, program.static["batch_size"]
  adapted_on = ("the evaluated batch itself" if run.adapt_set == "test_batch" else
                "the first adapt_n training examples under the same shift")
  return {
      "test_time_examples": "at test batch size (or adapt_n) b: the first floor(n_test/b)*b "
                            "test examples, the same for every mode, shift and adaptation",
      "population_statistics": f"Ioffe Alg. 2 over the first {run.population_batches} "
                               f"training minibatches of {b} (examples in order, wrapping "
                               "around), train-mode forward, variance x m/(m-1)",
      "adaptation": f"adapt_set={run.adapt_set!r}: statistics of {adapted_on}, mixed as "
                    "mean = (N mu_s + n mu_t)/(N + n), likewise the (biased) variance; "
                    "N = adapt_prior, n = adapt_n; one forward pass",
      "test_time_undefined_fill": UNDEFINED_FILL,
      "test_time_undefined": "entries whose stats_mode_defined / shift_defined is False "
                             "(batch statistics of a one-element set) hold the fill, not a "
                             "measurement"}
