"""Scale-aware curvature and relative landscape measures (docs/measurements.md,
"Curvature" and "Loss landscape along the update"): the per-layer Hessian
block's lambda_max against a dense Hessian, the invariance of the scaled
sharpness under rescaling a batch-normalised kernel, and the relative
landscape measures against hand computations."""

import numpy as np
import jax
import jax.flatten_util
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from icsjax import analysis
from icsjax import data as data_lib
from icsjax import runner
from icsjax.forward import model_fns
from icsjax.probes import curvature, landscape
from test_probes import HP_NAMES, quiet_run, ref_loss_fn, tiny_curvature_config


def random_tridiagonal(rng, steps, scale=1.0, split_at=()):
  alphas = rng.standard_normal(steps) * scale
  betas = np.abs(rng.standard_normal(steps)) * scale
  betas[list(split_at)] = 0.0  # a Lanczos restart: T splits into blocks
  return alphas, betas


def dense_lambda_max(alphas, betas):
  return np.linalg.eigvalsh(curvature.tridiagonal(alphas, betas))[-1]


def test_tridiagonal_lambda_max_matches_eigvalsh():
  rng = np.random.default_rng(0)
  fn = jax.jit(curvature.tridiagonal_lambda_max)
  cases = [random_tridiagonal(rng, 1), random_tridiagonal(rng, 2),
           random_tridiagonal(rng, 30, scale=1e3), random_tridiagonal(rng, 12, split_at=(3, 7)),
           # Negative-dominant: its largest-|lambda| eigenvalue is its smallest.
           (np.r_[-50.0, -1.0, 0.5, 2.0], np.r_[0.1, 0.2, 0.3, 0.0])]
  for alphas, betas in cases:
    want = dense_lambda_max(alphas, betas)
    t_norm = np.abs(np.linalg.eigvalsh(curvature.tridiagonal(alphas, betas))).max()
    got = float(fn(jnp.asarray(alphas, jnp.float32), jnp.asarray(betas, jnp.float32)))
    assert got == pytest.approx(want, abs=1e-5 * t_norm), (alphas, betas)
  alphas, betas = random_tridiagonal(rng, 5)
  alphas[-1] = np.nan  # a diverged model
  assert np.isnan(float(fn(jnp.asarray(alphas, jnp.float32), jnp.asarray(betas, jnp.float32))))


def probe_setup(norm, **overrides):
  """A tiny group (3 -> 4 -> 4 -> 3 deep linear network) at initialisation, what
  the curvature probe reads of its first model, and the probe as one compiled
  function of that. 20 Lanczos steps exceed every kernel's 12 or 16 entries."""
  c = tiny_curvature_config(**overrides)
  c.curvature_every, c.lanczos_steps, c.slq_vectors, c.hutchinson_samples = 0, 20, 1, 2
  c.sweep.norm = (norm,)
  (gr,) = runner.build_group_runs(runner.study_lib.expand(c))
  first = lambda tree: jax.tree_util.tree_map(lambda a: a[0], tree)
  params, stats = first(gr.state.params), first(gr.state.batch_stats)
  hp = {k: jnp.float32(c[k]) for k in HP_NAMES}
  b = c.curvature_batch_size
  probe = curvature.ProbeInputs(params, stats, gr.data.train_x[:b], gr.data.train_y[:b], None,
                                jax.random.PRNGKey(1), jax.random.PRNGKey(2))
  records = jax.jit(lambda p: curvature.records(gr.spec, model_fns(gr.spec, hp), p))
  return c, gr.spec, hp, probe, records


@pytest.mark.parametrize("norm", ["batchnorm", "none"])
def test_layer_lambda_max_matches_the_dense_hessian_block(norm):
  c, spec, hp, probe, probe_records = probe_setup(norm)
  static = dict(spec.static)
  ds = data_lib.load(static)
  loss = ref_loss_fn(spec.model, probe.batch_stats, probe.x, probe.y, hp, None, ds.task)
  rec = probe_records(probe)
  assert spec.weight_layers == ("dense_0", "dense_1", "dense_out")
  assert spec.scale_invariant == ((norm == "batchnorm",) * 2 + (False,))
  for i, name in enumerate(spec.weight_layers):
    kernel = probe.params[name]["kernel"]
    flat = lambda w, name=name, shape=kernel.shape: loss(
        {**probe.params, name: {**probe.params[name], "kernel": w.reshape(shape)}})
    block = np.asarray(jax.hessian(flat)(kernel.reshape(-1)), np.float64)
    eig = np.linalg.eigvalsh((block + block.T) / 2)
    scale = np.abs(eig).max()
    # lanczos_steps exceeds every kernel's entries: the run is exact.
    assert float(rec["layer_lambda_max"][i]) == pytest.approx(eig[-1], abs=1e-4 * scale)
    sq = float(np.sum(np.square(np.asarray(kernel, np.float64))))
    assert float(rec["layer_sharpness_scaled"][i]) == pytest.approx(sq * eig[-1],
                                                                    abs=1e-4 * scale * sq)
  # Fewer steps than a kernel's entries: Ritz values lie inside the spectrum. And
  # the product raveled as under vmap (accelerators) gives the same run.
  few, at_once = jax.jit(lambda p, k: [curvature.layer_lambda_max(
      loss, p, spec.weight_layers, steps, k, in_sequence=False) for steps in (3, c.lanczos_steps)])(
      probe.params, probe.layer_vector_key)
  exact = np.asarray(rec["layer_lambda_max"])
  assert (np.asarray(few) <= exact + 1e-5 * np.abs(exact)).all()
  np.testing.assert_allclose(np.asarray(at_once), exact, rtol=1e-4)


def test_scaled_sharpness_is_invariant_to_rescaling_a_batch_normalised_kernel():
  # Scaling W by c is batch norm with eps / c^2: a tiny eps makes that change
  # negligible (checked below against the smallest batch variance).
  eps = 1e-10
  c, spec, hp, probe, probe_records = probe_setup("batchnorm", norm_eps=eps)
  fns = model_fns(spec, hp)
  out, taps, _ = fns.apply(probe.params, probe.batch_stats, probe.x, train=True)
  min_var = min(float(jnp.var(pre, axis=0).min()) for pre, _ in taps)
  assert eps / (0.5 ** 2 * min_var) < 1e-6
  base = probe_records(probe)
  invariant = np.array(spec.scale_invariant)
  assert invariant.tolist() == [True, True, False]
  for factor in (2.0, 0.5):
    params = dict(probe.params)
    for name, inv in zip(spec.weight_layers, invariant):
      if inv:
        params = curvature.with_kernel(params, name, factor * params[name]["kernel"])
    scaled_out = fns.apply(params, probe.batch_stats, probe.x, train=True)[0]
    np.testing.assert_allclose(np.asarray(scaled_out), np.asarray(out), rtol=1e-4, atol=1e-5)
    rec = probe_records(probe.replace(params=params))
    np.testing.assert_allclose(np.asarray(rec["layer_sharpness_scaled"]),
                               np.asarray(base["layer_sharpness_scaled"]), rtol=1e-3)
    expected = np.where(invariant, factor ** -2.0, 1.0) * np.asarray(base["layer_lambda_max"])
    np.testing.assert_allclose(np.asarray(rec["layer_lambda_max"]), expected, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(rec["weight_norm"]),
                               np.where(invariant, factor, 1.0) * np.asarray(base["weight_norm"]),
                               rtol=1e-6)
    assert not np.allclose(np.asarray(rec["layer_lambda_max"])[invariant],
                           np.asarray(base["layer_lambda_max"])[invariant], rtol=0.1)


def test_relative_landscape_measures_divide_by_the_base_loss_and_gradient_norm():
  # L(p) = sum(a * p^2) + 1 on two leaves: every loss and gradient by hand.
  a = {"u": np.array([1.0, 3.0]), "v": np.array([[0.5], [2.0]])}
  loss = lambda p: sum(jnp.sum(a[k] * p[k] ** 2) for k in p) + 1.0
  params = {"u": jnp.array([1.0, -2.0]), "v": jnp.array([[0.5], [1.5]])}
  update = {"u": jnp.array([-0.1, 0.3]), "v": jnp.array([[0.2], [-0.4]])}
  multiples = (0.5, 1.0, 4.0)
  base_loss, base_grads = jax.value_and_grad(loss)(params)
  rec = landscape.along_update(jax.value_and_grad(loss), params, update, base_loss, base_grads,
                               multiples)
  p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
  u64 = {k: np.asarray(v, np.float64) for k, v in update.items()}
  loss64 = lambda p: sum(np.sum(a[k] * p[k] ** 2) for k in p) + 1.0
  grad64 = lambda p: np.concatenate([(2 * a[k] * p[k]).ravel() for k in p])
  at = lambda m: {k: p64[k] + m * u64[k] for k in p64}
  losses = [loss64(p64)] + [loss64(at(m)) for m in multiples]
  g0 = grad64(p64)
  diffs = np.array([np.linalg.norm(g0 - grad64(at(m))) for m in multiples])
  assert float(rec["landscape_loss_variation_relative"]) == pytest.approx(
      (max(losses) - min(losses)) / losses[0], rel=1e-5)
  np.testing.assert_allclose(np.asarray(rec["landscape_grad_diff_relative"]),
                             diffs / np.linalg.norm(g0), rtol=1e-5)


@pytest.mark.slow
def test_scale_aware_records_land_in_analysis_load(tmp_path):
  c = tiny_config(depth=1, steps=4, scan_length=2, record_every=4, eval_every=4,
                  segment_steps=4, landscape_every=2, curvature_every=4, curvature_batch_size=8,
                  lanczos_steps=3, slq_vectors=1, hutchinson_samples=1)
  c.sweep.norm, c.sweep.lr, c.seeds = ("none", "batchnorm"), (0.1,), 1
  quiet_run(c, tmp_path / "w")
  ds = analysis.load(tmp_path / "w")
  for name in ("layer_lambda_max", "layer_sharpness_scaled"):
    assert ds[name].dims == ("model", "curvature_step", "weight_layer"), name
    assert np.isfinite(ds[name].values).all(), name
  np.testing.assert_allclose(ds.layer_sharpness_scaled.values,
                             ds.weight_norm.values ** 2 * ds.layer_lambda_max.values, rtol=1e-5)
  assert ds.scale_invariant.dims == ("model", "weight_layer")
  assert ds.scale_invariant.sel(variant="batchnorm").values.tolist() == [[True, False]]
  assert ds.scale_invariant.sel(variant="none").values.tolist() == [[False, False]]
  assert ds.landscape_grad_diff_relative.dims == ("model", "landscape_step", "lr_multiple")
  # The landscape's base point is the step's own forward pass: its loss is that
  # step's train_loss, and (plain SGD) its gradient norm is |update| / lr.
  train_loss = ds.train_loss.sel(step=ds.landscape_step.values).values
  np.testing.assert_allclose(ds.landscape_loss_variation_relative.values,
                             ds.landscape_loss_variation.values / train_loss, rtol=1e-5)
  grad_norm = ds.landscape_update_norm / 0.1
  np.testing.assert_allclose(ds.landscape_grad_diff_relative.values,
                             (ds.landscape_grad_diff / grad_norm).values, rtol=1e-4)
