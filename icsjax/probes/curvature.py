"""Curvature from Hessian-vector products: Lanczos, stochastic Lanczos
quadrature (SLQ) and Hutchinson's trace (DESIGN.md B.4).

Every function takes ``hvp``, a map from a flat vector to the Hessian times
it, so the same code serves a network's loss (``flat_hvp``) and, in tests, an
explicit matrix. Random vectors come from a key; nothing here knows about
models or steps.

The compiled loop keeps Lanczos's tridiagonal matrices; their small
eigen-decompositions (``gauss_quadrature``) run in NumPy once per segment.
Inside the loop, LAPACK's batched eigh ran its batch on a thread pool that
two CPU devices could deadlock on.
"""

from __future__ import annotations

import jax
import numpy as np
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

# A Lanczos step whose new direction keeps less than this share of |H v| has run
# out of Krylov space (float32 rounding leaves ~1e-7 of it); it restarts there.
BREAKDOWN = 1e-4


def flat_hvp(loss_fn, params):
  """(hvp on flat vectors, dimension) of loss_fn at params: forward-over-reverse."""
  flat, unravel = ravel_pytree(params)
  grad_fn = jax.grad(loss_fn)

  def hvp(v):
    return ravel_pytree(jax.jvp(grad_fn, (params,), (unravel(v),))[1])[0]
  return hvp, flat.shape[0]


def lanczos(hvp, v0, steps: int):
  """Lanczos tridiagonalisation with full reorthogonalisation.

  Returns (alphas, betas, basis): T's diagonal (steps,), its off-diagonal
  (steps,; the last entry couples to no further row) and the orthonormal
  (steps, dim) basis. Each step takes the three-term recurrence,
  then one classical Gram-Schmidt pass against the whole basis (Paige's full
  reorthogonalisation). The basis is read twice a step; on a CPU that
  reading costs about as much as the Hessian-vector product.

  When the Krylov space of v0 is exhausted (an invariant subspace), the next
  direction is a new one orthogonal to the basis and its coupling is 0: T
  becomes block diagonal, every Ritz value stays a true eigenvalue estimate,
  and the quadrature weights of v0 (first components) fall on the first block.
  That direction is the coordinate axis the basis covers least (covered: the
  basis's squared entries summed over rows, so its residual is at least
  (dim - rows) / dim > 0), projected out in the same pass as w. (A random
  vector would cost a random number per parameter at every step.)
  """
  dim = v0.shape[0]
  v0 = v0 / jnp.linalg.norm(v0)
  # One spare row: step j always writes row j + 1, the last one into the spare.
  basis = jnp.zeros((steps + 1, dim), v0.dtype).at[0].set(v0)

  def step(j, carry):
    basis, covered, alphas, betas = carry
    v, v_prev = basis[j], basis[jnp.maximum(j - 1, 0)]
    w = hvp(v)
    scale = jnp.linalg.norm(w)
    alpha = jnp.vdot(v, w)
    beta_prev = jnp.where(j > 0, betas[jnp.maximum(j - 1, 0)], 0.0)
    w = w - alpha * v - beta_prev * v_prev
    axis = jnp.argmin(covered)
    proj = jnp.stack([basis @ w, basis[:, axis]]) @ basis  # (2, dim): one read of the basis
    w = w - proj[0]
    restart = jax.nn.one_hot(axis, dim, dtype=w.dtype) - proj[1]
    beta = jnp.linalg.norm(w)
    broke = beta <= BREAKDOWN * jnp.maximum(scale, jnp.finfo(v0.dtype).tiny)
    nxt = jnp.where(broke, restart / jnp.linalg.norm(restart), w / jnp.where(broke, 1.0, beta))
    return (basis.at[j + 1].set(nxt), covered + jnp.square(nxt), alphas.at[j].set(alpha),
            betas.at[j].set(jnp.where(broke, 0.0, beta)))

  zeros = jnp.zeros((steps,), v0.dtype)
  basis, _, alphas, betas = jax.lax.fori_loop(
      0, steps, step, (basis, jnp.square(v0), zeros, zeros))
  return alphas, betas, basis[:steps]


def slq(hvp, dim: int, steps: int, vectors: int, key, dtype=jnp.float32):
  """Stochastic Lanczos quadrature (Ghorbani et al. 2019), the compiled part.

  Returns (alphas, betas), each (vectors, steps): the tridiagonal matrix of
  each Rademacher start vector; ``gauss_quadrature`` turns them into the
  density. Vectors run one after another, so only one basis is held.
  """
  def one(k):
    return lanczos(hvp, jax.random.rademacher(k, (dim,), dtype), steps)[:2]
  return jax.lax.map(one, jax.random.split(key, vectors))


def tridiagonal(alphas, betas) -> np.ndarray:
  """The symmetric tridiagonal matrices (..., steps, steps) of Lanczos's coefficients."""
  alphas, betas = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
  steps = alphas.shape[-1]
  t = np.zeros(alphas.shape + (steps,))
  i = np.arange(steps)
  t[..., i, i] = alphas
  t[..., i[:-1], i[1:]] = t[..., i[1:], i[:-1]] = betas[..., :-1]
  return t


def gauss_quadrature(alphas, betas):
  """(nodes, weights), each shaped like alphas: the Ritz values and the squared
  first components of T's eigenvectors, so that sum_j weights_j f(nodes_j)
  approximates v^T f(H) v / |v|^2, exactly for polynomials of degree < 2 *
  steps. A non-finite T (a diverged model) gives NaN."""
  t = tridiagonal(alphas, betas)
  finite = np.isfinite(t).all(axis=(-2, -1))
  nodes, vecs = np.linalg.eigh(np.where(finite[..., None, None], t, 0.0))
  weights = np.square(vecs[..., 0, :])
  nan = np.where(finite[..., None], 1.0, np.nan)
  return nodes * nan, weights * nan


def spectrum_records(alphas, betas) -> dict:
  """The curvature records derived from the tridiagonals (..., vectors, steps)."""
  nodes, weights = gauss_quadrature(alphas, betas)
  return {"slq_nodes": nodes.astype(np.float32), "slq_weights": weights.astype(np.float32),
          "hessian_lambda_max": nodes.max(axis=(-2, -1)).astype(np.float32),
          "hessian_lambda_min": nodes.min(axis=(-2, -1)).astype(np.float32)}


def hutchinson_trace(hvp, dim: int, samples: int, key, dtype=jnp.float32):
  """Hutchinson's estimate of tr(H): the mean of z^T H z over Rademacher z."""
  def one(k):
    z = jax.random.rademacher(k, (dim,), dtype)
    return jnp.vdot(z, hvp(z))
  return jnp.mean(jax.lax.map(one, jax.random.split(key, samples)))


def moments(nodes, weights, orders):
  """SLQ spectral density moments: mean over vectors of sum_j weights * nodes**k."""
  return np.stack([np.mean(np.sum(weights * nodes ** k, axis=-1)) for k in orders])
