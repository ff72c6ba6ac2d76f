"""Loss surfaces: filter normalisation by hand, and surfaces by explicit evaluation."""

import numpy as np
import jax
import jax.numpy as jnp

from icsjax import data as data_lib
from icsjax import models
from icsjax.analysis import surfaces
from conftest import tiny_config


def tiny_bn_model():
  c = tiny_config(arch="vgg", activation="relu", channels=(3,), width=5, depth=1)
  static = {k: c[k] for k in c if k != "sweep"}
  ds = data_lib.load(static)
  module = models.build(static, ds.num_outputs)
  variables = module.init({"params": jax.random.PRNGKey(0)}, ds.train_x[:2], train=False,
                          hp={})
  return ds, module, variables


def test_filter_normalised_direction_matches_a_hand_computation():
  _, _, variables = tiny_bn_model()
  params = variables["params"]
  key = jax.random.PRNGKey(3)
  d = surfaces.filter_normalised_direction(key, params)
  leaves, _ = jax.tree_util.tree_flatten(params)
  raw = [np.asarray(jax.random.normal(k, w.shape, w.dtype))
         for k, w in zip(jax.random.split(key, len(leaves)), leaves)]
  for (path, w), dw, r in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                              jax.tree_util.tree_leaves(d), raw):
    w, dw = np.asarray(w, np.float64), np.asarray(dw, np.float64)
    if w.ndim < 2:  # biases, BN scale and bias
      assert (dw == 0).all(), path
      continue
    for f in range(w.shape[-1]):  # each output filter, one at a time
      want = r[..., f] / np.linalg.norm(r[..., f]) * np.linalg.norm(w[..., f])
      np.testing.assert_allclose(dw[..., f], want, rtol=1e-5, err_msg=str(path))


def test_surfaces_equal_explicit_evaluations():
  ds, module, variables = tiny_bn_model()
  params, stats = variables["params"], variables["batch_stats"]
  loss = surfaces.eval_mode_loss(module, stats, ds.test_x[:32], ds.test_y[:32], ds.task)
  d1 = surfaces.filter_normalised_direction(jax.random.PRNGKey(1), params)
  d2 = surfaces.filter_normalised_direction(jax.random.PRNGKey(2), params)
  alphas, betas = [-0.5, 0.0, 0.5], [-1.0, 1.0]
  shifted = lambda *terms: jax.tree_util.tree_map(
      lambda p, *ds: p + sum(c * d for c, d in zip(terms[::2], ds)), params, *terms[1::2])
  one = surfaces.surface_1d(loss, params, d1, alphas)
  for i, a in enumerate(alphas):
    np.testing.assert_allclose(one[i], loss(shifted(a, d1)), rtol=1e-6)
  assert float(one[1]) == float(loss(params))
  two = surfaces.surface_2d(loss, params, d1, d2, alphas, betas)
  assert two.shape == (3, 2)
  for i, a in enumerate(alphas):
    for j, b in enumerate(betas):
      np.testing.assert_allclose(two[i, j], loss(shifted(a, d1, b, d2)), rtol=1e-6)
  other = jax.tree_util.tree_map(lambda p, d: p + d, params, d1)
  line = surfaces.interpolate(loss, params, other, [0.0, 0.25, 1.0])
  np.testing.assert_allclose(line[0], loss(params), rtol=1e-6)
  np.testing.assert_allclose(line[2], loss(other), rtol=1e-6)
  np.testing.assert_allclose(line[1], loss(shifted(0.25, d1)), rtol=1e-5)
