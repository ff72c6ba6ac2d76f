"""Test-time evaluation (icsjax.test_time, icsjax.shifts) against NumPy.

The reference is a hand-written MLP forward pass in float64 whose batch norm
takes its (mean, variance) per layer from a callback: the batch's own, the
running ones, population statistics averaged by hand over the same training
minibatches, or source and batch statistics mixed by N/(N+n). Corruptions are
NumPy (and scipy) code fed the same normal draws.
"""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
import scipy.ndimage
import tensorflow_datasets as tfds

from conftest import tiny_config
from icsjax import data as data_lib
from icsjax import runner
from icsjax import shifts
from icsjax import study as study_lib
from icsjax import inference
from icsjax import records as records_lib
from icsjax import train
from icsjax.forward import model_fns
from icsjax.records import at_test_time
from icsjax.spec import GroupSpec
from test_train import np_loss

FILL = inference.UNDEFINED_FILL


# --- NumPy references ---------------------------------------------------------------

def np_corrupt(raw, name, severity, mean, inv_std, noise):
  """CIFAR-10-C-style corruptions of digits (pixels 0..16) and the feature shifts."""
  p = shifts.SEVERITY_PARAMS[name][severity - 1]
  raw = np.asarray(raw, np.float64)
  std = np.where(inv_std > 0, 1.0 / np.where(inv_std > 0, inv_std, 1.0), 0.0)
  if name == "mean_shift":
    return raw + p * std
  if name == "scale_shift":
    return mean + p * (raw - mean)
  u = raw / 16.0
  if name == "gaussian_noise":
    u = u + p * noise
  elif name == "brightness":
    u = u + p
  elif name == "contrast":
    m = u.mean(axis=(1, 2), keepdims=True)
    u = (u - m) * p + m
  else:
    u = scipy.ndimage.gaussian_filter(u, sigma=(0, p, p, 0), mode="reflect", truncate=4.0)
  return 16.0 * np.clip(u, 0.0, 1.0)


def noise_of(base_seed, corruption_index, shape, draw=0):
  return np.asarray(jax.random.normal(
      jax.random.fold_in(shifts.shift_key(base_seed, draw), corruption_index), shape, jnp.float32))


def sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def np_mlp(params, x, norm, stats_of, eps=1e-5):
  """Forward of icsjax's MLP over (..., batch, features) inputs; stats_of(i, pre)
  gives layer i's (mean, variance) over the batch axis (-2). Returns (logits, pre per layer)."""
  p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
  h = np.asarray(x, np.float64).reshape(x.shape[:-3] + (-1,))
  pres = []
  for i in range(sum(k.startswith("dense_") and k != "dense_out" for k in p)):
    pre = h @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"].get("bias", 0.0)
    pres.append(pre)
    if norm == "none":
      z = pre
    elif norm == "layernorm":
      m = pre.mean(-1, keepdims=True)
      z = (pre - m) / np.sqrt(((pre - m) ** 2).mean(-1, keepdims=True) + eps)
      z = z * p[f"norm_{i}"]["scale"] + p[f"norm_{i}"]["bias"]
    else:
      mean, var = stats_of(i, pre)
      z = (pre - mean) / np.sqrt(var + eps) * p[f"norm_{i}"]["scale"] + p[f"norm_{i}"]["bias"]
    h = sigmoid(z)
  return h @ p["dense_out"]["kernel"] + p["dense_out"]["bias"], pres


def batch_stats_np(pre):
  return pre.mean(-2, keepdims=True), pre.var(-2, keepdims=True)


def np_population(params, train_x, norm, batches, b):
  """Ioffe Alg. 2 by hand: the first batches*b training rows (wrapping), train mode."""
  rows = np.arange(batches * b) % len(train_x)
  means, variances = [], []
  for k in range(batches):
    _, pres = np_mlp(params, train_x[rows[k * b:(k + 1) * b]], norm, lambda i, pre:
                     batch_stats_np(pre))
    means.append([pre.mean(0) for pre in pres])
    variances.append([pre.var(0) for pre in pres])
  return [(np.mean([m[i] for m in means], 0), np.mean([v[i] for v in variances], 0) * b / (b - 1))
          for i in range(len(means[0]))]


def np_batched_metrics(params, x, y, n, norm, stats_of):
  """Mean loss and accuracy over whole batches of n rows, each batch forwarded alone."""
  used = (len(x) // n) * n
  xb = np.asarray(x)[:used].reshape((used // n, n) + x.shape[1:])
  out, _ = np_mlp(params, xb, norm, stats_of)
  loss, acc = np_loss(out.reshape(used, -1), np.asarray(y)[:used], data_lib.CLASSIFICATION)
  return loss, acc, used


def np_mixed(source, w_mean, w_var):
  """Stats callback: source statistics mixed with the batch's by weights n/(N+n)."""
  def stats_of(i, pre):
    mean_t, var_t = batch_stats_np(pre)
    mean_s, var_s = source[i]
    return (1 - w_mean) * mean_s + w_mean * mean_t, (1 - w_var) * var_s + w_var * var_t
  return stats_of


# --- corruptions ---------------------------------------------------------------------

@pytest.mark.parametrize("name", shifts.CORRUPTIONS)
def test_each_corruption_matches_numpy_at_a_fixed_seed(name):
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 17, (5, 8, 8, 1)).astype(np.float32)  # digits' 0..16 pixels
  mean = raw.mean(0)
  inv_std = np.where(raw.std(0) > 0, 1 / np.maximum(raw.std(0), 1e-12), 0).astype(np.float32)
  key = jax.random.fold_in(shifts.shift_key(7), 3)
  noise = np.asarray(jax.random.normal(key, raw.shape, jnp.float32))
  for severity in shifts.SEVERITIES:
    got = shifts.corrupt(jnp.asarray(raw), name, severity, dataset="digits",
                         feature_mean=jnp.asarray(mean), feature_inv_std=jnp.asarray(inv_std),
                         key=key)
    want = np_corrupt(raw, name, severity, mean, inv_std, noise)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=2e-5,
                               err_msg=f"{name} {severity}")
    if name in shifts.IMAGE_CORRUPTIONS:
      assert 0 <= np.asarray(got).min() and np.asarray(got).max() <= 16
    assert not np.allclose(np.asarray(got), raw)  # every severity shifts something


# --- the whole test-time record, every model against NumPy alone ------------------------

def run_group(c):
  """Trains the single group of config c segment by segment; (program, real models'
  final host state, test-time records of the last segment)."""
  (gr,) = runner.build_group_runs(study_lib.expand(c))
  for seg in range(c.steps // c.segment_steps):
    records = runner.run_segment(gr, seg * c.segment_steps)
  return gr, runner.host_state(gr), records["test_time"]


def test_records_match_numpy_for_every_model_including_undefined_batch_one():
  c = tiny_config(steps=20, segment_steps=20, record_every=20, eval_every=20,
                  test_time_every=20, test_batch_sizes=(1, 5, 16), population_batches=3,
                  shift_severities=(2, 5), adapt_sizes=(1, 8), adapt_priors=(0.0, 16.0))
  c.sweep.lr = (0.2,)
  c.sweep.bn_momentum = (0.5, 0.9)  # swept in one compiled group: running statistics differ
  gr, state, rec = run_group(c)
  data, k = gr.data, gr.group.size
  assert k == 4 and len({str(d) for d in gr.group.coords["bn_momentum"]}) == 2
  x_te, y_te = np.asarray(data.test_x), np.asarray(data.test_y)
  mean, inv_std = np.asarray(data.feature_mean), np.asarray(data.feature_inv_std)
  raw = np.asarray(data.raw_test_x)
  shifted = [x_te] + [
      (np_corrupt(raw, name, s, mean, inv_std, noise_of(c.base_seed, ci, raw.shape)) - mean)
      * inv_std for ci, name in enumerate(c.shift_corruptions) for s in c.shift_severities]
  coords = at_test_time.coords(gr.spec)
  assert coords["stats_mode_defined"][1] == [[False, True, True], [True] * 3, [True] * 3]
  defined = np.array(coords["shift_defined"][1])  # (adapt, adapt_n, adapt_prior)
  assert defined.sum() == defined.size - 2 and not defined[1, 0, 0] and not defined[3, 0, 0]
  for m in range(k):  # each model evaluated alone
    params = jax.tree_util.tree_map(lambda a: a[m], state.params)
    stats = state.batch_stats
    running = [(np.asarray(stats[f"norm_{i}"]["mean"][m], np.float64),
                np.asarray(stats[f"norm_{i}"]["var"][m], np.float64)) for i in range(c.depth)]
    population = np_population(params, np.asarray(data.train_x), "batchnorm",
                               c.population_batches, c.batch_size)
    # statistics modes
    for j, b in enumerate(c.test_batch_sizes):
      modes = {"batch": lambda i, pre: batch_stats_np(pre),
               "running": lambda i, pre: running[i], "population": lambda i, pre: population[i]}
      for mi, mode in enumerate(inference.STATS_MODES):
        got_loss = rec["stats_mode_loss"][m, -1, mi, j]
        got_acc = rec["stats_mode_accuracy"][m, -1, mi, j]
        if mode == "batch" and b == 1:
          assert got_loss == FILL and got_acc == FILL
          continue
        loss, acc, used = np_batched_metrics(params, x_te, y_te, b, "batchnorm", modes[mode])
        np.testing.assert_allclose(got_loss, loss, rtol=1e-4, err_msg=f"{mode} b={b}")
        assert abs(got_acc - acc) <= 1.01 / used, (mode, b)
    # shifts x adaptation
    got = rec["shift_loss"][m, -1]  # (corruption, severity, adapt, adapt_n, adapt_prior)
    assert got.shape == (1 + len(c.shift_corruptions), 2, 4, 2, 2)
    for kj, n in enumerate(c.adapt_sizes):
      for pi, prior in enumerate(c.adapt_priors):
        w = n / (prior + n)
        for ai, (wm, wv) in enumerate(((0, 0), (w, w), (w, 0), (0, w))):
          for si, x in enumerate(shifted):
            ci, sev = (0, 0) if si == 0 else divmod(si - 1, 2)
            ci += si > 0
            value = got[ci, sev, ai, kj, pi]
            if not defined[ai, kj, pi]:
              assert value == FILL
              continue
            loss, _, _ = np_batched_metrics(params, x, y_te, n, "batchnorm",
                                            np_mixed(running, wm, wv))
            np.testing.assert_allclose(value, loss, rtol=2e-4,
                                       err_msg=f"shift {si} adapt {ai} n={n} N={prior}")
    # the clean set is the same at every severity
    np.testing.assert_array_equal(got[0, 0], got[0, 1])


# --- no batch statistics, no gap ---------------------------------------------------------

def one_model(c, norm, seed=0):
  """(spec, data, hp, one model's state) of config c with norm, untrained."""
  static = {k: c[k] for k in c if k != "sweep"}
  static["norm"] = norm
  run = study_lib.run_spec(c)
  data = shifts.with_shifted_sets(data_lib.load(static), run, static)
  spec = GroupSpec(static=static, run=run, task=data.task, num_outputs=data.num_outputs,
                   input_shape=data.input_shape, num_train=data.num_train,
                   num_test=data.num_test)
  hp = {k: jnp.float32(c[k]) for k in study_lib.DYNAMIC_FIELDS}
  return spec, data, hp, train.init_model(spec, seed, hp)


@pytest.mark.parametrize("norm", ["layernorm", "none"])
def test_layernorm_and_no_norm_have_no_train_eval_gap(norm):
  c = tiny_config(test_time_every=20, test_batch_sizes=(1, 3, 7, 64), population_batches=2)
  program, data, hp, _ = one_model(c, norm)
  fn = jax.jit(lambda st: inference.stats_mode_records(program, model_fns(program, hp), st, data))
  assert all(all(row) for row in inference.stats_mode_defined(program, c.test_batch_sizes))
  for seed in range(3):  # several random models: a property of the norm kind
    state = train.init_model(program, seed, hp)
    state = state.replace(params=jax.tree_util.tree_map(
        lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(seed), p.shape), state.params))
    rec = fn(state)
    for name in ("stats_mode_loss", "stats_mode_accuracy"):
      v = np.asarray(rec[name])  # (stats_mode, test_batch_size)
      assert np.isfinite(v).all() and (v >= 0).all()
      np.testing.assert_allclose(v, np.broadcast_to(v[1], v.shape), rtol=2e-6, err_msg=name)


# --- a separate adaptation set -----------------------------------------------------------

def test_separate_adaptation_set_matches_numpy():
  c = tiny_config(test_time_every=20, adapt_set="separate", adapt_sizes=(2, 6),
                  adapt_priors=(0.0, 4.0),
                  shift_corruptions=("contrast", "mean_shift"), shift_severities=(4,))
  program, data, hp, state = one_model(c, "batchnorm")
  rng = np.random.default_rng(1)  # source statistics far from the data's
  stats = {name: {"mean": jnp.asarray(rng.normal(size=8), jnp.float32),
                  "var": jnp.asarray(rng.uniform(0.5, 3, size=8), jnp.float32)}
           for name in state.batch_stats}
  state = state.replace(batch_stats=stats)
  rec = jax.jit(lambda st: inference.shift_records(program, model_fns(program, hp), st, data))(state)
  running = [(np.asarray(stats[f"norm_{i}"]["mean"], np.float64),
              np.asarray(stats[f"norm_{i}"]["var"], np.float64)) for i in range(c.depth)]
  mean, inv_std = np.asarray(data.feature_mean), np.asarray(data.feature_inv_std)
  y_te = np.asarray(data.test_y)
  raw_te, raw_tr = np.asarray(data.raw_test_x), np.asarray(data.raw_train_x)
  for ci, name in enumerate(("clean",) + tuple(c.shift_corruptions)):
    shift = (lambda raw, draw: raw if name == "clean" else np_corrupt(
        raw, name, 4, mean, inv_std, noise_of(c.base_seed, ci - 1, raw.shape, draw)))
    x = (shift(raw_te, 0) - mean) * inv_std
    for kj, n in enumerate(c.adapt_sizes):
      adapt_x = (shift(raw_tr[:max(c.adapt_sizes)], 1)[:n] - mean) * inv_std
      for pi, prior in enumerate(c.adapt_priors):
        w = n / (prior + n)
        for ai, (wm, wv) in enumerate(((0, 0), (w, w), (w, 0), (0, w))):
          # statistics: one forward over the adaptation set, adapting layer by layer
          mixed = []
          def keep(i, pre):
            mixed.append(np_mixed(running, wm, wv)(i, pre))
            return mixed[-1]
          np_mlp(state.params, adapt_x, "batchnorm", keep)
          used = (len(x) // n) * n
          out, _ = np_mlp(state.params, x[:used], "batchnorm", lambda i, pre: mixed[i])
          loss, _ = np_loss(out, y_te[:used], data_lib.CLASSIFICATION)
          np.testing.assert_allclose(rec["shift_loss"][ci, 0, ai, kj, pi], loss, rtol=2e-4,
                                     err_msg=f"{name} adapt {ai} n={n} N={prior}")


def test_tfds_corrupted_test_sets_are_evaluated_like_the_others():
  c = tiny_config(dataset="cifar10", test_time_every=20, tfds_corruptions=("fog",),
                  shift_corruptions=("brightness",), shift_severities=(3,), adapt_sizes=(8,),
                  adapt_priors=(0.0,), monitor_size=8)
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    program, data, hp, state = one_model(c, "batchnorm")
    src = tfds.data_source("cifar10_corrupted/fog_3", split="test")
    want_x = np.stack([src[i]["image"] for i in range(len(src))]) / 255.0
    want_y = np.array([src[i]["label"] for i in range(len(src))])
  rec = jax.jit(lambda st: inference.shift_records(program, model_fns(program, hp), st, data))(state)
  assert shifts.corruption_coords(program.run) == ["clean", "brightness", "tfds_fog"]
  assert rec["shift_loss"].shape == (3, 1, 4, 1, 1)
  x = (want_x - np.asarray(data.feature_mean)) * np.asarray(data.feature_inv_std)
  running = [(np.zeros(8), np.ones(8))] * c.depth  # an untrained model's running statistics
  for ai, w in ((0, 0.0), (1, 1.0)):  # none; full adaptation (N = 0)
    loss, acc, _ = np_batched_metrics(state.params, x, want_y, 8, "batchnorm",
                                      np_mixed(running, w, w))
    np.testing.assert_allclose(rec["shift_loss"][2, 0, ai, 0, 0], loss, rtol=2e-4)
    assert abs(rec["shift_accuracy"][2, 0, ai, 0, 0] - acc) <= 1.01 / 48


def test_batch_one_is_undefined_only_where_a_set_has_one_element():
  c = tiny_config(arch="vgg", activation="relu", channels=(4, 6), width=8, depth=1)
  program, *_ = one_model(c, "batchnorm")
  assert program.norm_set_sizes(1) == (64, 16, 1)  # 8x8, 4x4 conv; dense
  assert program.norm_set_sizes(3) == (192, 48, 3)
  assert not inference.batch_statistics_defined(program, 1)
  assert inference.batch_statistics_defined(program, 2)
  for norm in ("layernorm", "none"):
    assert inference.batch_statistics_defined(one_model(c, norm)[0], 1)


def test_record_dims_are_named():
  assert records_lib.variable_dims("test_time", "stats_mode_accuracy") == (
      "model", "test_time_step", "stats_mode", "test_batch_size")
  assert records_lib.variable_dims("test_time", "shift_loss") == (
      "model", "test_time_step", "corruption", "severity", "adapt", "adapt_n", "adapt_prior")
