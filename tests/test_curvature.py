"""Lanczos, SLQ and Hutchinson on explicit matrices, against eigvalsh."""

import numpy as np
import jax
import jax.flatten_util
import jax.numpy as jnp
import pytest

from icsjax.probes import curvature


def symmetric(eigs, seed=0):
  """Q diag(eigs) Q^T with a random orthogonal Q."""
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigs), len(eigs))))
  return (q * np.asarray(eigs)) @ q.T


def matrix_hvp(a):
  a32 = jnp.asarray(a, jnp.float32)
  return jax.jit(lambda v: a32 @ v)


def matrix_quadratic_form(a):
  a32 = jnp.asarray(a, jnp.float32)
  return jax.jit(lambda v: v @ a32 @ v)


# Its largest-|lambda| eigenvalue is negative: power iteration would report -6.
NEGATIVE_DOMINANT = symmetric(np.concatenate([[-6.0, -2.5], np.linspace(-1, 3, 14)]))


def test_gauss_quadrature_is_exact_below_degree_2m():
  a = NEGATIVE_DOMINANT
  v0 = np.random.default_rng(1).standard_normal(len(a))
  for m in (3, 5):
    alphas, betas, basis = curvature.lanczos(matrix_hvp(a), jnp.asarray(v0, jnp.float32), m)
    np.testing.assert_allclose(np.asarray(basis @ basis.T), np.eye(m), atol=1e-5)
    nodes, w = curvature.gauss_quadrature(alphas, betas)
    u = v0 / np.linalg.norm(v0)
    for k in range(2 * m):
      want = u @ np.linalg.matrix_power(a, k) @ u
      assert np.sum(w * nodes ** k) == pytest.approx(want, rel=1e-3, abs=1e-3 * 6 ** k)


def test_extreme_eigenvalues_converge_to_eigvalsh_and_are_exact_at_full_dimension():
  a = NEGATIVE_DOMINANT
  eig = np.linalg.eigvalsh(a)
  v0 = jnp.asarray(np.random.default_rng(2).standard_normal(len(a)), jnp.float32)
  lows, highs = [], []
  for m in (2, 4, 8, len(a)):
    ritz = np.sort(curvature.gauss_quadrature(*curvature.lanczos(matrix_hvp(a), v0, m)[:2])[0])
    lows.append(ritz[0])
    highs.append(ritz[-1])
  # Ritz values interlace: the estimates move outward monotonically...
  assert all(x >= y - 1e-5 for x, y in zip(lows, lows[1:]))
  assert all(x <= y + 1e-5 for x, y in zip(highs, highs[1:]))
  assert lows[-1] == pytest.approx(eig[0], abs=1e-4) and lows[-1] < -5.9
  assert highs[-1] == pytest.approx(eig[-1], abs=1e-4)
  # ...and SLQ's nodes at full dimension are the whole spectrum, for every vector.
  nodes, weights = curvature.gauss_quadrature(
      *curvature.slq(matrix_hvp(a), jnp.zeros(len(a)), len(a), 3, jax.random.PRNGKey(4)))
  for v in range(3):
    np.testing.assert_allclose(np.sort(np.asarray(nodes[v])), eig, atol=1e-4)
    assert float(weights[v].sum()) == pytest.approx(1.0, abs=1e-5)


def test_an_exhausted_krylov_space_restarts_and_still_finds_every_eigenvalue():
  # Repeated eigenvalues: a start vector spans a 3-dimensional Krylov space only.
  eig = np.repeat([-1.0, 0.5, 2.0], 4)
  a = symmetric(eig, seed=3)
  nodes, weights = curvature.gauss_quadrature(
      *curvature.slq(matrix_hvp(a), jnp.zeros(len(a)), len(a), 2, jax.random.PRNGKey(5)))
  for v in range(2):
    np.testing.assert_allclose(np.sort(np.asarray(nodes[v])), np.sort(eig), atol=1e-4)
    # The quadrature weights stay those of the start vector: 3 distinct nodes carry them.
    w = np.asarray(weights[v], np.float64)
    for lam in (-1.0, 0.5, 2.0):
      assert 0 < w[np.isclose(np.asarray(nodes[v]), lam, atol=1e-3)].sum() <= 1
    assert w.sum() == pytest.approx(1.0, abs=1e-5)


def test_slq_moments_converge_to_the_spectral_density_moments():
  a = NEGATIVE_DOMINANT
  n = len(a)
  eig = np.linalg.eigvalsh(a)
  nodes, weights = curvature.gauss_quadrature(
      *curvature.slq(matrix_hvp(a), jnp.zeros(n), n, 400, jax.random.PRNGKey(6)))
  got = np.asarray(curvature.moments(nodes, weights, (0, 1, 2, 3)), np.float64)
  want = np.array([np.mean(eig ** k) for k in (0, 1, 2, 3)])  # tr(A^k) / n
  # Per vector z (Rademacher), z^T A^k z / n has variance 2 sum_{i != j} (A^k)_ij^2 / n^2.
  for k in range(4):
    ak = np.linalg.matrix_power(a, k)
    sd = np.sqrt(2 * (np.sum(ak ** 2) - np.sum(np.diag(ak) ** 2)) / n ** 2 / 400)
    assert abs(got[k] - want[k]) <= 5 * sd + 1e-4 * max(1, abs(want[k])), k


def test_hutchinson_converges_to_the_trace():
  a = NEGATIVE_DOMINANT
  off = 2 * (np.sum(a ** 2) - np.sum(np.diag(a) ** 2))
  errors = []
  for samples in (16, 256, 4096):
    est = float(curvature.hutchinson_trace(matrix_quadratic_form(a), jnp.zeros(len(a)), samples,
                                           jax.random.PRNGKey(7)))
    assert abs(est - np.trace(a)) < 5 * np.sqrt(off / samples) + 1e-4
    errors.append(abs(est - np.trace(a)))
  assert errors[-1] < 0.15 * np.sqrt(off)  # ~1/sqrt(samples): small at 4096


def test_a_diverged_tridiagonal_reads_nan():
  alphas = np.array([[1.0, 2.0], [np.nan, 1.0]])
  betas = np.array([[0.5, 0.0], [0.5, 0.0]])
  rec = curvature.spectrum_records(alphas[:, None], betas[:, None])  # (model, vector, step)
  np.testing.assert_allclose(np.sort(rec["slq_nodes"][0, 0]),
                             np.linalg.eigvalsh([[1.0, 0.5], [0.5, 2.0]]), rtol=1e-6)
  assert np.isnan(rec["slq_nodes"][1]).all() and np.isnan(rec["hessian_lambda_max"][1])


def test_tree_hvp_and_quadratic_form_match_the_dense_hessian():
  def f(p):
    return jnp.sum(jnp.sin(p["w"]) * p["b"][0]) + jnp.sum(p["w"] ** 3)
  params = {"w": jnp.arange(5, dtype=jnp.float32) / 5, "b": jnp.array([0.7], jnp.float32)}
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  h = np.asarray(jax.hessian(lambda v: f(unravel(v)))(flat), np.float64)
  for seed in (8, 9):
    v = np.random.default_rng(seed).standard_normal(6)
    tree = unravel(jnp.asarray(v, jnp.float32))
    got = jax.flatten_util.ravel_pytree(curvature.tree_hvp(f, params)(tree))[0]
    np.testing.assert_allclose(np.asarray(got), h @ v, rtol=1e-5, atol=1e-6)
    assert float(curvature.tree_quadratic_form(f, params)(tree)) == pytest.approx(
        v @ h @ v, rel=1e-5, abs=1e-6)


def tree_of(flat, shapes):
  """Splits a flat vector into a dict of arrays of the given shapes."""
  out, at = {}, 0
  for name, shape in shapes.items():
    n = int(np.prod(shape))
    out[name] = flat[at:at + n].reshape(shape)
    at += n
  return out


@pytest.mark.parametrize("unbatched", [False, True], ids=["concatenated", "leaf_by_leaf"])
def test_lanczos_on_a_tree_equals_lanczos_on_its_flat_vector(unbatched):
  """Leaves of several shapes, run past the dimension so that the Krylov space
  is exhausted and the restart picks the least covered axis across leaves;
  each product raveled as ravel_pytree does or leaf by leaf."""
  a = symmetric(np.r_[np.full(6, 2.0), np.linspace(-1, 1, 6)], seed=3)  # 7 distinct eigenvalues
  shapes = {"k": (2, 3), "b": (1,), "z": (5,)}
  v0 = jnp.asarray(np.random.default_rng(9).standard_normal(12), jnp.float32)
  a32 = jnp.asarray(a, jnp.float32)
  flat = lambda t: jnp.concatenate([t[k].reshape(-1) for k in shapes])
  tree_hvp = lambda t: tree_of(a32 @ flat(t), shapes)
  want = curvature.lanczos(matrix_hvp(a), v0, 12)
  got = curvature.lanczos(tree_hvp, tree_of(v0, shapes), 12, unbatched=unbatched)
  assert float(jnp.min(jnp.abs(want[1][:6]))) > 1e-3 and float(want[1][6]) == 0.0  # restarted
  np.testing.assert_allclose(np.asarray(got[0]), np.asarray(want[0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), atol=1e-5)
  basis = np.concatenate([np.asarray(got[2][k]).reshape(12, -1) for k in shapes], axis=1)
  np.testing.assert_allclose(basis, np.asarray(want[2]), atol=1e-4)  # summed in another order
  np.testing.assert_allclose(basis @ basis.T, np.eye(12), atol=1e-5)


def test_ravel_leaf_by_leaf_equals_ravel_pytree():
  tree = {"k": jnp.arange(6.0).reshape(2, 3), "b": jnp.asarray([-1.0]), "z": jnp.ones((2, 2, 1))}
  want = jax.flatten_util.ravel_pytree(tree)[0]
  got = curvature.ravel_leaf_by_leaf(tree, want.size, want.dtype)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_rademacher_entries_are_fair_independent_signs():
  like = {"w": jnp.zeros((300, 70)), "b": jnp.zeros((7,))}
  z = curvature.rademacher(jax.random.PRNGKey(10), like)
  assert z["w"].shape == (300, 70) and z["b"].shape == (7,)
  flat = np.concatenate([np.asarray(z["w"]).ravel(), np.asarray(z["b"])])
  assert set(np.unique(flat)) == {-1.0, 1.0}
  n = flat.size
  assert abs(flat.mean()) < 4 / np.sqrt(n)
  # Neighbours (bits of one word, and across words) are uncorrelated.
  for lag in (1, 31, 32, 33):
    assert abs(np.mean(flat[:-lag] * flat[lag:])) < 4 / np.sqrt(n), lag
  other = curvature.rademacher(jax.random.PRNGKey(11), like)
  assert abs(np.mean(np.asarray(other["w"]).ravel() * np.asarray(z["w"]).ravel())) < 4 / np.sqrt(n)


def test_slq_and_hutchinson_at_once_equal_them_in_sequence():
  a = NEGATIVE_DOMINANT
  key = jax.random.PRNGKey(7)
  runs = [(curvature.slq(matrix_hvp(a), jnp.zeros(len(a)), 6, 3, key, in_sequence),
           curvature.hutchinson_trace(matrix_quadratic_form(a), jnp.zeros(len(a)), 5, key, in_sequence))
          for in_sequence in (True, False)]
  for got, want in zip(jax.tree_util.tree_leaves(runs[1]), jax.tree_util.tree_leaves(runs[0])):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
