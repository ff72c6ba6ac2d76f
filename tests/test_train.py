"""The vmapped, scanned group loop against a separately written, un-vmapped loop."""

import dataclasses
import math

import numpy as np
import scipy.stats
import jax
import jax.numpy as jnp
import optax
import pytest

from conftest import tiny_config
from icsjax import data as data_lib
from icsjax import failure
from icsjax import losses as losses_lib
from icsjax import models
from icsjax import placement
from icsjax import records as records_lib
from icsjax import runner
from icsjax import shuffle
from icsjax import store
from icsjax import study
from icsjax import train
from icsjax.records import batch_stats


# --- an independent reference: one model, a Python loop, NumPy statistics ----------

def reference_indices(base_seed, seed, num_steps, batch, n):
  """Epoch-by-epoch swap-or-not permutations read as one stream, one position
  at a time in Python integers (written without the engine; jax.random only
  draws each epoch's round keys)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(base_seed), seed), 1)
  rounds = 6 * max(1, math.ceil(math.log2(n)))
  keys = {}

  def mix(x):
    x ^= x >> 16
    x = (x * 0x85EBCA6B) % 2**32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) % 2**32
    return x ^ (x >> 16)

  def example(e, i):
    if e not in keys:
      pk, sk = jax.random.split(jax.random.fold_in(key, e))
      keys[e] = (np.asarray(jax.random.randint(pk, (rounds,), 0, n)).tolist(),
                 np.asarray(jax.random.bits(sk, (rounds,), np.uint32)).tolist())
    for pivot, salt in zip(*keys[e]):
      partner = (pivot - i) % n
      if mix(max(i, partner) ^ salt) >> 31:
        i = partner
    return i

  return np.array([[example((t * batch + b) // n, (t * batch + b) % n) for b in range(batch)]
                   for t in range(num_steps)])


def pad_units(per_layer):
  """(layer, unit) with NaN where a layer is narrower than the widest."""
  width = max(len(a) for a in per_layer)
  return [np.concatenate([np.asarray(a, np.float64), np.full(width - len(a), np.nan)])
          for a in per_layer]


def reference_optimizer(kind, hp):
  if kind == "sgd":
    return optax.sgd(hp["lr"])
  if kind == "momentum":
    return optax.sgd(hp["lr"], momentum=hp["momentum"])
  return optax.adam(hp["lr"], b1=hp["b1"], b2=hp["b2"], eps=hp["adam_eps"])


def np_loss(out, y, task):
  out = np.asarray(out, np.float64)
  if task == data_lib.REGRESSION:
    return np.mean(np.sum((out - y) ** 2, -1)), None
  z = out - out.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.mean(logp[np.arange(len(y)), y]), np.mean(out.argmax(-1) == y)


def reference_start(config, static, hp, seed):
  """(data, model, params, batch stats, optimizer, its state, minibatch indices,
  the seed's noise key) of one model before its first step, written out."""
  ds = data_lib.load(static)
  model = models.build(static, ds.num_outputs)
  root = jax.random.fold_in(jax.random.PRNGKey(config.base_seed), seed)
  variables = model.init({"params": jax.random.fold_in(root, 0)},
                         jnp.zeros((1,) + ds.input_shape), train=False, hp=hp)
  # init_gain (when given) multiplies every kernel, nothing else
  gain = hp.get("init_gain", 1.0)
  params = {layer: {name: v * gain if name == "kernel" else v for name, v in p.items()}
            for layer, p in variables["params"].items()}
  tx = reference_optimizer(static["optimizer"], {k: float(v) for k, v in hp.items()})
  idx = reference_indices(config.base_seed, seed, config.steps, static["batch_size"],
                          ds.num_train)
  return (ds, model, params, variables.get("batch_stats", {}), tx,
          tx.init(params), idx, jax.random.fold_in(root, 2))


# Where each activation saturates, written out apart from icsjax.models.SATURATION.
SATURATED = {"sigmoid": lambda z: np.abs(z) > 4, "tanh": lambda z: np.abs(z) > 2,
             "relu": lambda z: z <= 0, "identity": lambda z: np.zeros(z.shape, bool)}


def per_unit(a):
  """(examples x positions, units) in float64."""
  return np.asarray(a, np.float64).reshape(-1, a.shape[-1])


def reference_monitor(model, params, stats, ds, hp, config, activation, key):
  """The monitor-set records of one model state: percentiles, saturated
  fractions and unit-averaged variances (NumPy on the model's taps)."""
  variables = {"params": params, "batch_stats": stats}
  if config.monitor_mode == "train":
    (_, taps), _ = model.apply(variables, ds.monitor_x, train=True, hp=hp, rngs={"noise": key},
                               mutable=["batch_stats"])
  else:
    _, taps = model.apply(variables, ds.monitor_x, train=False, hp=hp)
  units = list(config.tracked_units)
  return {"monitor_percentiles": [np.quantile(per_unit(z)[:, units], batch_stats.QUANTILES,
                                              axis=0).T for _, z in taps],
          "saturated_fraction": [SATURATED[activation](per_unit(z)).mean() for _, z in taps],
          "monitor_preact_var": [per_unit(a).var(0).mean() for a, _ in taps],
          "monitor_nonlin_input_var": [per_unit(z).var(0).mean() for _, z in taps]}


def reference_eval(model, params, stats, ds, hp, b):
  """Test loss and accuracy in both modes over the first floor(n/b)*b test examples."""
  out = {}
  for mode, is_train in (("eval_mode", False), ("train_mode", True)):
    losses, accs = [], []
    for k in range(ds.num_test // b):
      xb = np.asarray(ds.test_x)[k * b:(k + 1) * b]
      yb = np.asarray(ds.test_y)[k * b:(k + 1) * b]
      if is_train:
        (o, _), _ = model.apply({"params": params, "batch_stats": stats}, xb,
                                train=True, hp=hp, mutable=["batch_stats"])
      else:
        o, _ = model.apply({"params": params, "batch_stats": stats}, xb, train=False, hp=hp)
      l, a = np_loss(o, yb, ds.task)
      losses.append(l)
      accs.append(a)
    out[f"test_loss_{mode}"] = np.mean(losses)
    if ds.task == data_lib.CLASSIFICATION:
      out[f"test_accuracy_{mode}"] = np.mean(accs)
  return out


def reference_run(config, static, model_index_in_group, hp, seed):
  """Trains one model step by step; returns its records as {name: list over time}.
  Step 0 (first in every record and evaluation) is the initial state, with the
  batch moments of step 1's minibatch under it."""
  ds, model, params, stats, tx, opt_state, idx, noise_root = reference_start(
      config, static, hp, seed)
  activation = "identity" if static["arch"] == "dln" else static["activation"]
  b = static["batch_size"]
  x_tr, y_tr = np.asarray(ds.train_x), np.asarray(ds.train_y)
  rec = {}
  add = lambda k, v: rec.setdefault(k, []).append(np.asarray(v))

  @jax.jit  # one model, one step: jitted only so the Python loop is quick
  def loss_and_grad(params, stats, x, y, key):
    def loss_fn(p):
      (out, taps), upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                     hp=hp, rngs={"noise": key}, mutable=["batch_stats"])
      return losses_lib.task_loss(out, y, ds.task)[0], (out, taps, upd.get("batch_stats", {}))
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  def record(t, params, stats, taps):
    """Records at step t: taps of update t's batch (update 1's at t = 0), the state after it."""
    for name, i in (("preact", 0), ("nonlin_input", 1)):
      # per unit / channel over the batch (and every position of a conv layer)
      acts = [per_unit(tap[i]) for tap in taps]
      add(f"{name}_mean", pad_units([a.mean(0) for a in acts]))
      add(f"{name}_var", pad_units([a.var(0) for a in acts]))
    for name in stats.get("norm_0", {}):
      add(f"running_{name}", pad_units([stats[f"norm_{i}"][name] for i in range(len(taps))]))
    mkey = jax.random.fold_in(jax.random.fold_in(noise_root, t), 1)
    for k, v in reference_monitor(model, params, stats, ds, hp, config, activation,
                                  mkey).items():
      add(k, v)

  for t in range(1, config.steps + 1):
    x, y = x_tr[idx[t - 1]], y_tr[idx[t - 1]]
    key = jax.random.fold_in(jax.random.fold_in(noise_root, t), 0)
    (loss, (out, taps, new_stats)), grads = loss_and_grad(params, stats, x, y, key)
    if t == 1:
      record(0, params, stats, taps)
      for k, v in reference_eval(model, params, stats, ds, hp, b).items():
        add(k, v)
    add("train_loss", loss)
    if ds.task == data_lib.CLASSIFICATION:
      add("train_accuracy", np_loss(out, y, ds.task)[1])
    updates, opt_state = tx.update(grads, opt_state, params)
    params, stats = optax.apply_updates(params, updates), new_stats
    if t % config.record_every == 0:
      record(t, params, stats, taps)
    if t % config.eval_every == 0:
      for k, v in reference_eval(model, params, stats, ds, hp, b).items():
        add(k, v)
  return {k: np.array(v, np.float64) for k, v in rec.items()}


def reference_hp(config, lr) -> dict:
  """One model's hyperparameters, from the config, at learning rate lr."""
  names = ("momentum", "b1", "b2", "adam_eps", "bn_momentum", "noise_mean_range",
           "noise_scale_low", "noise_scale_high", "noise_mean_spread", "noise_scale_std",
           "init_gain")
  return {"lr": jnp.float32(lr), **{k: jnp.float32(config[k]) for k in names}}


CASES = [
    dict(norm="batchnorm", optimizer="sgd"),
    dict(norm="noisy_batchnorm", optimizer="momentum", monitor_mode="train"),
    # Batch-norm gradients sum to zero over the batch, so an input feature that is
    # constant within a minibatch gets a kernel gradient of pure rounding error;
    # Adam with a tiny eps turns its sign into a full step, so the two loops could
    # only agree bitwise. A larger eps keeps such rounding at rounding size.
    dict(norm="l1_batchnorm", optimizer="adam", monitor_mode="eval", adam_eps=1e-3),
    # vmapped convolutions run as grouped convolutions that sum in another order;
    # over 40 momentum steps that moves near-zero channel means by a few 1e-6, and
    # may move a relu input within that of 0 across it: one of the first conv
    # layer's 8192 monitor entries (32 examples x 8 x 8 positions x 4 channels).
    dict(norm="batchnorm", optimizer="momentum", arch="vgg", activation="relu",
         channels=(4, 6), convs_per_stage=1, width=8, depth=1, atol=1e-5,
         saturated_atol=1.5 / 8192),
    dict(norm="layernorm", optimizer="sgd", dataset="gaussian_regression", arch="dln",
         activation="identity", width=10, depth=4, **{"sweep.lr": (0.005, 0.01, 0.02, 0.04)}),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[f"{c['norm']}-{c.get('arch', 'mlp')}" for c in CASES])
def test_vmapped_group_equals_unvmapped_loop(tmp_path, case):
  case = dict(case)
  norm = case.pop("norm")
  atol = case.pop("atol", 2e-6)
  atols = {"saturated_fraction": case.pop("saturated_atol", atol)}
  c = tiny_config(**case)
  c.sweep.norm = (norm,)
  if c.dataset == "gaussian_regression":
    c.tracked_units = (0, 3)
  ds = runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  (group,) = ds.values()
  assert group.sizes["model"] == 8  # 4 learning rates x 2 seeds, one compiled group
  j = 5  # lr index 2, seed 1
  static = {k: c[k] for k in c if k != "sweep"}
  static["norm"] = norm
  hp = reference_hp(c, c.sweep.lr[2])
  assert float(group.lr[j]) == c.sweep.lr[2] and int(group.seed[j]) == 1
  ref = reference_run(c, static, j, hp, seed=1)
  got = group.isel(model=j)
  assert group.record_step.values[0] == 0 and group.eval_step.values[0] == 0
  # Not loop records: divergence, and the host's verdict on the records (test_failure).
  assert set(ref) == {k for k in got.data_vars
                      if k not in ("diverged_step",) + failure.VARIABLES}
  for name, want in ref.items():
    # float32 rounding follows the scale a value is computed from: a percentile
    # near 0 of inputs of size 20 carries the rounding of 20 (2e-6 relative to it).
    scale = np.nanmax(np.abs(want)) if np.isfinite(want).any() else 0.0
    np.testing.assert_allclose(got[name].values, want, rtol=1e-5,
                               atol=max(atols.get(name, atol), 2e-6 * scale), err_msg=name)
  assert int(got.diverged_step) == 0


def test_rerun_is_bitwise_identical(tmp_path):
  c = tiny_config()
  c.sweep.norm = ("noisy_batchnorm",)
  for w in ("a", "b"):
    runner.run(c, tmp_path / w, progress=False, log=lambda *_: None)
  for pa, pb in zip(store.segment_paths(tmp_path / "a", "main"),
                    store.segment_paths(tmp_path / "b", "main"), strict=True):
    with np.load(pa) as za, np.load(pb) as zb:
      assert za.files == zb.files
      for k in za.files:
        np.testing.assert_array_equal(za[k], zb[k], err_msg=k)


def test_paired_models_share_batches_and_initial_weights(tmp_path):
  # Recording after every step exposes step 1's pre-norm activation of layer 0,
  # x_batch @ W0 + b0: a function of the initial weights and the minibatch only.
  c = tiny_config(steps=4, scan_length=1, record_every=1, eval_every=2, segment_steps=4)
  c.sweep.norm = ("none", "batchnorm", "layernorm")
  c.sweep.lr = (0.1, 0.3)
  ds = runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  first = np.concatenate([g.preact_mean.sel(record_step=1).isel(layer=0).values for g in ds.values()])
  # Step 0 reads the same batch under the same (initial) weights, in the pass before chunk 0.
  at_init = np.concatenate([g.preact_mean.sel(record_step=0).isel(layer=0).values
                            for g in ds.values()])
  np.testing.assert_allclose(at_init, first, rtol=1e-6, atol=1e-7)
  seeds = np.concatenate([g.seed.values for g in ds.values()])
  for s in (0, 1):
    same = first[seeds == s]
    np.testing.assert_array_equal(same, np.broadcast_to(same[0], same.shape))
  assert not np.allclose(first[seeds == 0][0], first[seeds == 1][0])
  # ... and that value is the brute-force one from the reference minibatch.
  static = {k: c[k] for k in c if k != "sweep"}
  static["norm"] = "none"  # the variant whose first layer has a bias
  data = data_lib.load(static)
  model = models.build(static, data.num_outputs)
  idx = reference_indices(c.base_seed, 1, 1, c.batch_size, data.num_train)[0]
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(c.base_seed), 1), 0)
  w = model.init({"params": key}, jnp.zeros((1,) + data.input_shape), train=False,
                 hp={"bn_momentum": 0.9})["params"]["dense_0"]
  x = np.asarray(data.train_x)[idx].reshape(len(idx), -1).astype(np.float64)
  want = (x @ np.asarray(w["kernel"], np.float64) + np.asarray(w["bias"])).mean(0)
  np.testing.assert_allclose(first[seeds == 1][0], want, rtol=1e-5, atol=1e-6)


def test_minibatches_cover_each_epoch_once():
  n, b, steps = 37, 8, 30  # batches straddle epoch ends
  key = jax.random.PRNGKey(3)
  whole = np.asarray(train.segment_batch_indices(key, 0, steps, b, n)).reshape(-1)
  for e in range(len(whole) // n):
    assert sorted(whole[e * n:(e + 1) * n]) == list(range(n))
  # A later segment continues the same stream.
  later = np.asarray(train.segment_batch_indices(key, 10, steps - 10, b, n)).reshape(-1)
  np.testing.assert_array_equal(later, whole[10 * b:])


def epoch_order_p_values(n=11, epochs=3000):
  """p-values of chi-square tests that, over independent epochs, each position
  reads each example equally often, and the first two positions each ordered
  pair of examples."""
  order = np.asarray(train.segment_batch_indices(jax.random.PRNGKey(5), 0, epochs, n, n))
  counts = np.zeros((n, n))
  np.add.at(counts, (np.arange(n)[None].repeat(epochs, 0), order), 1)
  pairs = np.zeros((n, n))
  np.add.at(pairs, (order[:, 0], order[:, 1]), 1)
  pairs = pairs[~np.eye(n, dtype=bool)]
  return (scipy.stats.chisquare(counts.ravel(), ddof=2 * n - 2).pvalue,
          scipy.stats.chisquare(pairs).pvalue)


def test_epoch_orders_look_uniform(monkeypatch):
  assert min(epoch_order_p_values()) > 1e-3
  # Too few rounds leave examples near their positions: the test sees it.
  monkeypatch.setattr(shuffle, "rounds", lambda n: 2)
  assert max(epoch_order_p_values()) < 1e-6


def test_diverging_model_is_flagged_and_isolated(tmp_path):
  c = tiny_config(activation="relu")
  c.sweep.norm = ("none",)
  c.sweep.lr = (0.05, 1e30, 0.2)
  (ds,) = runner.run(c, tmp_path / "a", progress=False, log=lambda *_: None).values()
  c2 = tiny_config(activation="relu")
  c2.sweep.norm = ("none",)
  c2.sweep.lr = (0.05, 0.2)
  (calm,) = runner.run(c2, tmp_path / "b", progress=False, log=lambda *_: None).values()
  wild = ds.lr.values == np.float64(1e30)
  div = ds.diverged_step.values
  assert (div[wild] > 0).all() and (div[~wild] == 0).all()
  for m in np.flatnonzero(wild):
    loss = ds.train_loss.isel(model=m).values
    at = div[m]
    assert np.isnan(loss[at - 1:]).all() and np.isfinite(loss[:at - 1]).all()
    assert np.isnan(ds.test_loss_eval_mode.isel(model=m).values[-1])
  for name in calm.data_vars:
    if calm[name].dtype.kind == "U":  # the failure reasons
      np.testing.assert_array_equal(ds[name].values[~wild], calm[name].values, err_msg=name)
      continue
    np.testing.assert_allclose(ds[name].values[~wild], calm[name].values, rtol=1e-5,
                               atol=1e-7, err_msg=name)
  assert ds.failure.values[wild].tolist() == ["diverged"] * 2


def test_models_are_trained_in_per_device_chunks():
  assert [placement.model_chunk(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 16, 64)] == \
      [1, 2, 3, 4, 5, 3, 7, 4, 4, 4]
  k, devices, chunk = 16, 2, 2
  seen = []

  def fn(x):  # each round: its models minus the smallest, so rounds are told apart
    seen.append(x.shape)
    return x - jnp.min(x)

  out = np.asarray(placement.in_chunks(fn, jnp.arange(k), devices, chunk))
  per_device = k // devices
  expected = np.empty(k, int)
  for r in range(per_device // chunk):  # brute force: round r takes chunk models per device
    members = [d * per_device + r * chunk + i for d in range(devices) for i in range(chunk)]
    expected[members] = np.array(members) - min(members)
  np.testing.assert_array_equal(out, expected)
  assert seen == [(devices * chunk,)]  # lax.map traces fn once


def test_one_model_per_device_maps_each_devices_models_in_turn():
  k, devices = 8, 2
  per_device = k // devices

  fn = lambda x, scale: scale * x + jnp.sin(x)
  x = jnp.arange(k, dtype=jnp.float32) ** 2
  batched = jax.vmap(placement.one_model_per_device(fn, devices), in_axes=(0, None))
  np.testing.assert_allclose(np.asarray(batched(x, 3.0)), 3.0 * x + np.sin(x), rtol=1e-6)
  # One lax.map over per_device rounds, each round one model of each device.
  scans = [e for e in jax.make_jaxpr(batched)(x, 3.0).eqns if e.primitive.name == "scan"]
  assert [e.params["length"] for e in scans] == [per_device]
  assert float(placement.one_model_per_device(fn, devices)(x[2], 3.0)) == pytest.approx(
      3.0 * float(x[2]) + np.sin(float(x[2])), rel=1e-6)


@pytest.mark.parametrize("activation, norm, lr, monitor_mode", [
    ("sigmoid", "none", 4.0, "train"),  # lr 4 saturates some sigmoid units by step 10
    ("relu", "batchnorm", 0.1, "eval"),
])
def test_step_0_and_the_monitor_signal_match_numpy(activation, norm, lr, monitor_mode):
  c = tiny_config(steps=10, segment_steps=10, record_every=5, eval_every=5,
                  activation=activation, monitor_mode=monitor_mode)
  c.sweep.norm, c.sweep.lr = (norm,), (lr,)
  (gr,) = runner.build_group_runs(runner.study_lib.expand(c))
  rec = runner.run_segment(gr, 0)
  final = runner.host_state(gr)  # after step 10, the last record
  times = records_lib.time_coords(gr.spec.run, 0)
  assert list(times["record_step"]) == [0, 5, 10] and list(times["eval_step"]) == [0, 5, 10]
  static = {**{k: c[k] for k in c if k != "sweep"}, "norm": norm}
  ds = data_lib.load(static)
  model = models.build(static, ds.num_outputs)
  hp = reference_hp(c, lr)
  x_tr, y_tr = np.asarray(ds.train_x), np.asarray(ds.train_y)
  for m, seed in enumerate(np.asarray(gr.group.coords["seed"])):
    init = train.init_model(gr.spec, int(seed), hp)
    noise_root = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(c.base_seed),
                                                       int(seed)), 2)
    monitor_key = lambda t: jax.random.fold_in(jax.random.fold_in(noise_root, t), 1)
    idx = reference_indices(c.base_seed, int(seed), 1, c.batch_size, ds.num_train)[0]
    (_, taps), _ = model.apply({"params": init.params, "batch_stats": init.batch_stats},
                               x_tr[idx], train=True, hp=hp, mutable=["batch_stats"])
    want = {}
    for name, i in (("preact", 0), ("nonlin_input", 1)):  # update 1's batch, initial weights
      want[f"{name}_mean"] = [per_unit(tap[i]).mean(0) for tap in taps]
      want[f"{name}_var"] = [per_unit(tap[i]).var(0) for tap in taps]
    for name in init.batch_stats.get("norm_0", {}):
      want[f"running_{name}"] = [init.batch_stats[f"norm_{i}"][name] for i in range(len(taps))]
    want.update(reference_monitor(model, init.params, init.batch_stats, ds, hp, c, activation,
                                  monitor_key(0)))
    assert set(want) == set(rec["record"])
    for name, v in want.items():
      np.testing.assert_allclose(rec["record"][name][m, 0], np.asarray(v, np.float64),
                                 rtol=1e-5, atol=1e-6, err_msg=f"step 0 {name}")
    for name, v in reference_eval(model, init.params, init.batch_stats, ds, hp,
                                  c.batch_size).items():
      np.testing.assert_allclose(rec["eval"][name][m, 0], v, rtol=1e-5, err_msg=f"step 0 {name}")
    # At the last record, from the state the run ends with.
    params, stats = (jax.tree_util.tree_map(lambda a: a[m], t)
                     for t in (final.params, final.batch_stats))
    last = reference_monitor(model, params, stats, ds, hp, c, activation, monitor_key(10))
    for name in ("saturated_fraction", "monitor_preact_var", "monitor_nonlin_input_var"):
      np.testing.assert_allclose(rec["record"][name][m, -1], last[name], rtol=1e-5, atol=1e-6,
                                 err_msg=f"step 10 {name}")
  saturated = rec["record"]["saturated_fraction"]
  assert 0 < saturated.max() < 1 and saturated.shape == (2, 3, 2)  # model, record_step, layer
  assert gr.spec.activation == activation
  assert records_lib.attrs(gr.spec)["saturation_threshold"] == (
      "|z| > 4" if activation == "sigmoid" else "z <= 0")


def test_a_group_traces_each_record_kind_once(monkeypatch):
  """A kind's Python runs once per group, however often the segment uses it
  (buffer shapes, chunk body, each batching of it, the per-device probe's
  rule): train._traced_once. The curvature probe ran four times before."""
  c = tiny_config(ics_every=10, landscape_every=20, curvature_every=20, curvature_batch_size=16,
                  lanczos_steps=3, layer_lanczos_steps=2, slq_vectors=1, hutchinson_samples=1)
  calls = {}

  def counted(kind):
    def compute(*args):
      calls[kind.name] = calls.get(kind.name, 0) + 1
      return kind.compute(*args)
    return dataclasses.replace(kind, compute=compute)
  monkeypatch.setattr(records_lib, "KINDS", tuple(counted(k) for k in records_lib.KINDS))
  [gr] = runner.build_group_runs(study.expand(c))
  gr.loop.segment.trace(gr.state, gr.hparams, gr.model_seeds, gr.data, jnp.int32(0))
  assert calls == {"record": 1, "eval": 1, "ics": 1, "landscape": 1, "curvature": 1}
