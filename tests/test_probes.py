"""In-loop probes against independent brute-force computations.

The reference trains each model alone in a Python loop with plain optax and
Flax, builds every mixed parameter set of gradient-ICS by hand, evaluates the
landscape at each eta explicitly and takes the Hessian as a dense matrix.
"""

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest

from conftest import tiny_config
from icsjax import data as data_lib
from icsjax import models
from icsjax import placement
from icsjax import runner
from icsjax.probes import curvature
from test_train import reference_start

HP_NAMES = ("lr", "momentum", "b1", "b2", "adam_eps", "bn_momentum", "noise_mean_range",
            "noise_scale_low", "noise_scale_high", "noise_mean_spread", "noise_scale_std")


def quiet_run(c, path):
  return runner.run(c, path, progress=False, log=lambda *_: None)


def ref_loss_fn(model, stats, x, y, hp, key, task):
  """The train-mode minibatch loss as a function of parameters, written out."""
  def loss(params):
    (out, _), _ = model.apply({"params": params, "batch_stats": stats}, x, train=True, hp=hp,
                              rngs={} if key is None else {"noise": key},
                              mutable=["batch_stats"])
    if task == data_lib.REGRESSION:
      return jnp.mean(jnp.sum((out - y) ** 2, -1))
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], 1))
  return loss


def f64(tree):
  return np.concatenate([np.asarray(a, np.float64).ravel()
                         for a in jax.tree_util.tree_leaves(tree)])


def reference_probes(c, static, hp, seed, owner):
  """One model trained alone; at each probe step, ICS and landscape by brute force.

  owner: {top-level parameter name: weight layer index}, written by hand.
  """
  ds, model, params, stats, tx, opt_state, idx, noise_root = reference_start(c, static, hp, seed)
  noisy = static["norm"] == "noisy_batchnorm"
  layers = sorted(set(owner.values()))
  kernel_of = {i: next(n for n, j in owner.items() if j == i and not n.startswith("norm"))
               for i in layers}
  out = {}
  for t in range(1, c.steps + 1):
    x, y = ds.train_x[idx[t - 1]], ds.train_y[idx[t - 1]]
    key = jax.random.fold_in(jax.random.fold_in(noise_root, t), 0)
    loss_fn = ref_loss_fn(model, stats, x, y, hp, key if noisy else None, ds.task)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    (_, _), upd = model.apply({"params": params, "batch_stats": stats}, x, train=True, hp=hp,
                              rngs={"noise": key} if noisy else {}, mutable=["batch_stats"])
    updates, opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    if c.ics_every and t % c.ics_every == 0:
      rows = []
      for i in layers:
        mixed = {n: (new_params[n] if owner[n] < i else params[n]) for n in params}
        g = np.asarray(grads[kernel_of[i]]["kernel"], np.float64).ravel()
        g2 = np.asarray(jax.grad(loss_fn)(mixed)[kernel_of[i]]["kernel"], np.float64).ravel()
        d = np.linalg.norm(g - g2)
        rows.append((d, d / np.linalg.norm(g), g @ g2 / np.linalg.norm(g) / np.linalg.norm(g2)))
      for name, col in zip(("ics_grad_diff", "ics_grad_diff_relative", "ics_grad_cosine"),
                           np.array(rows).T):
        out.setdefault(name, []).append(col)
    if c.landscape_every and t % c.landscape_every == 0:
      lr = float(hp["lr"])
      d = -f64(updates) / lr
      losses, diffs = [], []
      for m in c.landscape_lr_multiples:
        eta = m * lr
        point = jax.tree_util.tree_map(lambda p, u: p - eta * (-u / lr), params, updates)
        l2, g2 = jax.value_and_grad(loss_fn)(point)
        losses.append(float(l2))
        diffs.append(np.linalg.norm(f64(grads) - f64(g2)))
      every = [float(loss)] + losses
      out.setdefault("landscape_loss", []).append(losses)
      out.setdefault("landscape_grad_diff", []).append(diffs)
      out.setdefault("landscape_loss_variation", []).append(max(every) - min(every))
      out.setdefault("landscape_loss_variation_relative", []).append(
          (max(every) - min(every)) / float(loss))
      out.setdefault("landscape_grad_diff_relative", []).append(
          np.array(diffs) / np.linalg.norm(f64(grads)))
      out.setdefault("landscape_beta_smoothness", []).append(
          max(g / (m * lr * np.linalg.norm(d)) for g, m in zip(diffs, c.landscape_lr_multiples)))
    params, stats = new_params, upd["batch_stats"] if "batch_stats" in upd else stats
  return {k: np.array(v) for k, v in out.items()}


# in_sequence: the probes' evaluations one after another (a CPU) or at once (an accelerator).
CASES = [dict(norm="batchnorm", optimizer="sgd", in_sequence=True),
         dict(norm="noisy_batchnorm", optimizer="adam", adam_eps=1e-3, in_sequence=False),
         dict(norm="none", optimizer="momentum", in_sequence=True)]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[
    c["norm"] + "-" + c["optimizer"] + ("" if c["in_sequence"] else "-at_once") for c in CASES])
def test_ics_and_landscape_match_brute_force_for_every_model(tmp_path, monkeypatch, case):
  case = dict(case)
  norm, in_sequence = case.pop("norm"), case.pop("in_sequence")
  monkeypatch.setattr(placement, "probes_in_sequence", lambda backend: in_sequence)
  c = tiny_config(steps=6, scan_length=2, record_every=6, eval_every=6, segment_steps=6,
                  ics_every=2, landscape_every=2, landscape_lr_multiples=(0.5, 1.0, 4.0),
                  **case)
  c.sweep.norm, c.sweep.lr, c.seeds = (norm,), (0.1, 0.4), 2
  (group,) = quiet_run(c, tmp_path / "w").values()
  assert group.ics_grad_diff.dims == ("model", "ics_step", "weight_layer")
  assert list(group.weight_layer.values) == ["dense_0", "dense_1", "dense_out"]
  assert list(group.ics_step.values) == [2, 4, 6]
  assert group.landscape_loss.dims == ("model", "landscape_step", "lr_multiple")
  owner = {"dense_0": 0, "norm_0": 0, "dense_1": 1, "norm_1": 1, "dense_out": 2}
  static = {k: c[k] for k in c if k != "sweep"}
  static["norm"] = norm
  for m in range(group.sizes["model"]):  # each model probed alone
    hp = {k: jnp.float32(c[k]) for k in HP_NAMES}
    hp["lr"] = jnp.float32(group.lr.values[m])
    ref = reference_probes(c, static, hp, int(group.seed.values[m]), owner)
    for name, want in ref.items():
      got = group[name].isel(model=m).values
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6, err_msg=f"{name} model {m}")
  # The first layer has no layer before it: G' = G.
  np.testing.assert_array_equal(group.ics_grad_cosine.sel(weight_layer="dense_0").values, 1.0)
  assert (group.ics_grad_diff.sel(weight_layer="dense_out").values > 0).all()


def tiny_curvature_config(**kw):
  """A network of 59 parameters (3 -> 4 -> 4 -> 3, batch norm) for dense Hessians."""
  c = tiny_config(dataset="gaussian_regression", arch="dln", activation="identity",
                  regression_dim=3, width=4, depth=2, tracked_units=(0,), steps=4,
                  scan_length=2, record_every=4, eval_every=4, segment_steps=4,
                  curvature_every=2, curvature_batch_size=6, lanczos_steps=59,
                  slq_vectors=2, hutchinson_samples=400, **kw)
  c.sweep.lr, c.seeds = (0.02,), 1
  return c


def dense_hessian(c, static, state_params, stats, step):
  ds = data_lib.load(static)
  model = models.build(static, ds.num_outputs)
  b = c.curvature_batch_size
  hp = {k: jnp.float32(c[k]) for k in HP_NAMES}
  flat, unravel = jax.flatten_util.ravel_pytree(state_params)
  loss = ref_loss_fn(model, stats, ds.train_x[:b], ds.train_y[:b], hp, None, ds.task)
  return np.asarray(jax.hessian(lambda v: loss(unravel(v)))(flat), np.float64)


@pytest.mark.slow
def test_curvature_of_a_train_mode_bn_network_matches_its_dense_hessian(tmp_path):
  c = tiny_curvature_config()
  c.sweep.norm = ("batchnorm",)
  study = runner.study_lib.expand(c)
  (gr,) = runner.build_group_runs(study)
  assert gr.spec.num_params == 59
  records = runner.run_segment(gr, 0)
  params = jax.tree_util.tree_map(lambda a: a[0], gr.state.params)
  stats = jax.tree_util.tree_map(lambda a: a[0], gr.state.batch_stats)
  static = dict(gr.group.static)
  h = dense_hessian(c, static, params, stats, 4)
  np.testing.assert_allclose(h, h.T, atol=1e-5)
  eig = np.linalg.eigvalsh(h)
  rec = {k: np.asarray(v)[0, -1] for k, v in records["curvature"].items()}  # step 4
  scale = np.abs(eig).max()
  assert rec["hessian_lambda_max"] == pytest.approx(eig[-1], abs=1e-4 * scale)
  assert rec["hessian_lambda_min"] == pytest.approx(eig[0], abs=1e-4 * scale)
  # With as many Lanczos steps as parameters, every vector's nodes are the spectrum
  # and its weights sum to 1 (the density's zeroth moment).
  for v in range(c.slq_vectors):
    np.testing.assert_allclose(np.sort(rec["slq_nodes"][v]), eig, atol=1e-4 * scale)
  np.testing.assert_allclose(rec["slq_weights"].sum(-1), 1.0, atol=1e-5)
  # Hutchinson within 5 standard deviations of the exact trace: the variance of
  # z^T H z over Rademacher z is 2 * sum_{i != j} H_ij^2.
  sd = np.sqrt(2 * (np.sum(h ** 2) - np.sum(np.diag(h) ** 2)) / c.hutchinson_samples)
  assert abs(rec["hessian_trace"] - np.trace(h)) < 5 * sd
  # Per layer: the kernel norms of the parameters and of the probe-batch gradient.
  ds = data_lib.load(static)
  model = models.build(static, ds.num_outputs)
  hp = {k: jnp.float32(c[k]) for k in HP_NAMES}
  g = jax.grad(ref_loss_fn(model, stats, ds.train_x[:6], ds.train_y[:6], hp, None, ds.task))(
      params)
  for i, name in enumerate(("dense_0", "dense_1", "dense_out")):
    assert rec["weight_norm"][i] == pytest.approx(np.linalg.norm(params[name]["kernel"]),
                                                  rel=1e-5)
    assert rec["probe_grad_norm"][i] == pytest.approx(np.linalg.norm(g[name]["kernel"]),
                                                      rel=1e-4)
  assert records["model"]["eos_threshold"][0] == pytest.approx(2 / 0.02)
  # No step 0: curvature reads training only (records.curvature has no at_init).
  assert records["curvature"]["hessian_lambda_max"].shape[1] == 2


@pytest.mark.slow
def test_probes_do_not_change_training(tmp_path):
  base = dict(steps=8, scan_length=2, record_every=4, eval_every=4, segment_steps=8)
  on = tiny_config(**base, ics_every=2, landscape_every=4, curvature_every=8,
                   curvature_batch_size=16, lanczos_steps=5, slq_vectors=2,
                   hutchinson_samples=3)
  off = tiny_config(**base)
  runs = []
  for c in (on, off):
    c.sweep.norm, c.sweep.lr = ("noisy_batchnorm",), (0.1, 0.3)
    (gr,) = runner.build_group_runs(runner.study_lib.expand(c))
    records = runner.run_segment(gr, 0)
    runs.append((gr.state, records))
  assert set(runs[0][1]) - set(runs[1][1]) == {"ics", "landscape", "curvature"}
  same = lambda r: (r[0], r[1]["per_step"], r[1]["record"], r[1]["eval"])
  for a, b in zip(jax.tree_util.tree_leaves(same(runs[0])),
                  jax.tree_util.tree_leaves(same(runs[1])), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_model_chunks_fit_the_probe_memory():
  per_model = curvature.bytes_per_model(59, 20)
  chunk = lambda k, budget, backend="gpu": placement.group_model_chunk(k, 1, per_model, budget,
                                                                    backend)
  assert chunk(4, per_model) == 1 and chunk(4, 3 * per_model) == 2
  assert chunk(4, 10 * per_model) == 0  # the whole share at once
  assert chunk(8, 10 * per_model, "cpu") == 4  # CPU: cache-sized chunks still
  assert chunk(8, 3 * per_model, "cpu") == 2
  assert placement.group_model_chunk(6, 2, 0, 0, "gpu") == 0  # no curvature: no limit
  # At once: a basis per SLQ vector, or each Hutchinson sample's vector and its work arrays.
  assert curvature.bytes_per_model(59, 20, 2) == 2 * per_model
  assert curvature.bytes_per_model(59, 20, 1, 30) == 3 * per_model


@pytest.mark.slow
def test_curvature_in_sequence_at_once_and_in_model_chunks_agree(tmp_path, monkeypatch):
  """In sequence (this CPU: one model per device, SLQ vectors and Hutchinson samples
  one after another), at once (accelerators) and in memory-sized model chunks."""
  c = tiny_curvature_config()
  c.sweep.norm, c.seeds, c.sweep.lr = ("batchnorm",), 2, (0.01, 0.02)
  build = lambda: runner.build_group_runs(runner.study_lib.expand(c))[0].spec
  assert build().probes_in_sequence
  (per_model,) = quiet_run(c, tmp_path / "per_model").values()
  monkeypatch.setattr(placement, "probes_in_sequence", lambda backend: False)
  at_once = build()
  assert not at_once.probes_in_sequence and at_once.model_chunk == 4 // at_once.devices
  (whole,) = quiet_run(c, tmp_path / "whole").values()
  bytes_per_model = curvature.bytes_per_model(59, c.lanczos_steps, c.slq_vectors,
                                                            c.hutchinson_samples)
  monkeypatch.setattr(placement, "probe_memory_bytes", lambda mb: bytes_per_model)
  assert build().model_chunk == 1
  (chunked,) = quiet_run(c, tmp_path / "chunked").values()
  for other in (per_model, chunked):
    assert_same_curvature(other, whole)


def assert_same_curvature(got, whole):
  # A full-dimension Lanczos run amplifies the rounding of a vmap's other summation
  # order: Ritz values agree to a small fraction of the spectrum's extent.
  # The weight of a (near-)degenerate node may sit on either copy, so weights are
  # compared through the quadrature they define: sum_j w_j node_j^k.
  extent = float(np.abs(whole.slq_nodes).max())
  quad = lambda ds, k: (ds.slq_weights * (ds.slq_nodes / extent) ** k).sum("lanczos_step")
  for k in range(4):
    np.testing.assert_allclose(quad(got, k).values, quad(whole, k).values, atol=1e-5)
  # Lanczos's coefficients themselves drift with rounding over a full-dimension run;
  # the quadrature they define (above) and the Ritz values (below) do not.
  for name in set(whole.data_vars) - {"slq_weights", "lanczos_alpha", "lanczos_beta"}:
    if whole[name].dtype.kind == "U":  # the failure reasons
      np.testing.assert_array_equal(got[name].values, whole[name].values, err_msg=name)
      continue
    spectral = name.startswith(("slq_", "hessian_"))
    np.testing.assert_allclose(got[name].values, whole[name].values, rtol=1e-5,
                               atol=1e-5 * extent if spectral else 1e-6, err_msg=name)


def test_a_probe_draws_its_noise_once_and_sees_what_the_key_draws():
  """Noisy BN: the probes draw their noise before their loops (draw_noise) and
  hand the draw to every pass; a pass given the draw equals one given the key."""
  from icsjax import forward
  c = tiny_config()
  c.sweep.norm, c.sweep.lr = ("noisy_batchnorm",), (0.1,)
  (gr,) = runner.build_group_runs(runner.study_lib.expand(c))
  hp = {k: v[0] for k, v in gr.hparams.items()}
  fns = forward.model_fns(gr.spec, hp)
  state = jax.tree_util.tree_map(lambda a: a[0], gr.state)
  x, y = gr.data.train_x[:16], gr.data.train_y[:16]
  key, other = jax.random.PRNGKey(3), jax.random.PRNGKey(4)
  loss = jax.jit(lambda noise: fns.loss(state.params, state.batch_stats, x, y, noise)[0])
  drawn = fns.draw_noise(state.params, state.batch_stats, x, key)
  assert sorted(drawn) == ["norm_0", "norm_1"]  # one draw per normalised layer
  assert drawn["norm_0"]["scale"].shape == (16, 8)  # per example and unit
  np.testing.assert_allclose(loss(drawn), loss(key), rtol=1e-6)
  assert abs(float(loss(drawn)) - float(loss(other))) > 1e-4  # another key, another draw
  assert abs(float(loss(drawn)) - float(loss(None))) > 1e-4  # and none is no noise
  assert fns.draw_noise(state.params, state.batch_stats, x, None) is None
