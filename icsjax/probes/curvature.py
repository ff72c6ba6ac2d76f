"""Curvature from Hessian-vector products: Lanczos, stochastic Lanczos
quadrature (SLQ) and Hutchinson's trace (DESIGN.md B.4).

Every function takes ``hvp``, a map from a vector to the Hessian times it,
and the vectors are pytrees: a network's parameters (``tree_hvp``) or, in
tests, one flat array with an explicit matrix. Working on the parameter tree
itself, rather than on one raveled vector, spares every Hessian-vector
product a split and a concatenation of all parameters. Random vectors come
from a key; nothing here knows about models or steps.

The compiled loop keeps Lanczos's tridiagonal matrices; their small
eigen-decompositions (``gauss_quadrature``) run in NumPy once per segment.
Inside the loop, LAPACK's batched eigh ran its batch on a thread pool that
two CPU devices could deadlock on.
"""

from __future__ import annotations

import jax
import numpy as np
import jax.numpy as jnp

# A Lanczos step whose new direction keeps less than this share of |H v| has run
# out of Krylov space (float32 rounding leaves ~1e-7 of it); it restarts there.
BREAKDOWN = 1e-4


def tree_hvp(loss_fn, params):
  """The Hessian-vector product of loss_fn at params, on trees shaped like
  params: forward-over-reverse. The primal gradient does not depend on the
  vector, so XLA computes it once outside a loop of products."""
  grad_fn = jax.grad(loss_fn)
  return lambda v: jax.jvp(grad_fn, (params,), (v,))[1]


def tree_dot(a, b):
  """The dot product of two trees of one structure (lists of arrays included)."""
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                            jax.tree_util.tree_leaves(b)))


def rademacher(key, like, dtype=jnp.float32):
  """A tree of independent +-1 entries shaped like `like`, one random bit
  each: threefry makes 32 bits per output, and drawing an output per entry
  cost more than a Hessian-vector product of a 100k-parameter MLP on a CPU."""
  leaves, treedef = jax.tree_util.tree_flatten(like)
  sizes = [int(np.prod(np.shape(leaf))) for leaf in leaves]
  words = jax.random.bits(key, (-(-sum(sizes) // 32),), jnp.uint32)
  bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  signs = (1 - 2 * bits.astype(dtype)).reshape(-1)
  offsets = np.cumsum([0] + sizes)
  return jax.tree_util.tree_unflatten(treedef, [
      signs[o:o + n].reshape(np.shape(leaf)) for o, n, leaf in zip(offsets, sizes, leaves)])


def lanczos(hvp, v0, steps: int, axis_name=None):
  """Lanczos tridiagonalisation with full reorthogonalisation.

  v0 is a tree (a flat vector is a tree of one leaf). Returns (alphas,
  betas, basis): T's diagonal (steps,), its off-diagonal (steps,; the last
  entry couples to no further row) and the orthonormal basis, a tree of
  (steps, *leaf shape). Each step takes the three-term recurrence, then one
  classical Gram-Schmidt pass against the whole basis (Paige's full
  reorthogonalisation): its coefficients are sums over the leaves, each
  leaf's rows held as one (steps, leaf size) matrix. The basis is read twice
  a step; on a CPU that reading costs about as much as the Hessian-vector
  product.

  When the Krylov space of v0 is exhausted (an invariant subspace), the next
  direction is a new one orthogonal to the basis and its coupling is 0: T
  becomes block diagonal, every Ritz value stays a true eigenvalue estimate,
  and the quadrature weights of v0 (first components) fall on the first block.
  That direction is the coordinate axis the basis covers least (covered: the
  basis's squared entries summed over rows, so its residual is at least
  (dim - rows) / dim > 0), projected out of the basis. (A random vector would
  cost a random number per parameter.)

  Under vmap a branch on a batched value computes both sides, and the restart
  side reads the basis twice more: axis_name, the vmapped model axis when
  there is one, makes the test one unbatched "has any model broken down",
  so steps without a breakdown (all of them, in a real network's probe) skip it.
  """
  leaves, treedef = jax.tree_util.tree_flatten(v0)
  shapes = [leaf.shape for leaf in leaves]
  dtype = leaves[0].dtype
  flat = lambda tree: [x.reshape(-1) for x in jax.tree_util.tree_leaves(tree)]
  as_tree = lambda rows: jax.tree_util.tree_unflatten(
      treedef, [r.reshape(s) for r, s in zip(rows, shapes)])
  norm = jnp.sqrt(tree_dot(v0, v0))
  # One spare row: step j always writes row j + 1, the last one into the spare.
  basis = [jnp.zeros((steps + 1, leaf.size), dtype).at[0].set(leaf.reshape(-1) / norm)
           for leaf in leaves]

  def restart(basis, w, beta, broke):
    """w / beta, or where the Krylov space is exhausted a new unit direction
    orthogonal to the basis: the least covered coordinate axis of all leaves."""
    covered = [jnp.sum(jnp.square(b), axis=0) for b in basis]
    axes = [jnp.argmin(c) for c in covered]
    leaf = jnp.argmin(jnp.stack([c[a] for c, a in zip(covered, axes)]))
    hit = [(leaf == i).astype(dtype) for i in range(len(basis))]
    column = sum(h * b[:, a] for h, b, a in zip(hit, basis, axes))
    axis = [h * jax.nn.one_hot(a, x.shape[0], dtype=dtype) - column @ b
            for h, a, x, b in zip(hit, axes, w, basis)]
    axis_norm = jnp.sqrt(tree_dot(axis, axis))
    return [jnp.where(broke, r / axis_norm, x / jnp.where(broke, 1.0, beta))
            for r, x in zip(axis, w)]

  def step(j, carry):
    basis, alphas, betas = carry
    v = [b[j] for b in basis]
    v_prev = [b[jnp.maximum(j - 1, 0)] for b in basis]
    w = flat(hvp(as_tree(v)))
    scale = jnp.sqrt(tree_dot(w, w))
    alpha = tree_dot(v, w)
    beta_prev = jnp.where(j > 0, betas[jnp.maximum(j - 1, 0)], 0.0)
    w = [x - alpha * y - beta_prev * z for x, y, z in zip(w, v, v_prev)]
    coef = sum(b @ x for b, x in zip(basis, w))
    w = [x - coef @ b for x, b in zip(w, basis)]
    beta = jnp.sqrt(tree_dot(w, w))
    broke = beta <= BREAKDOWN * jnp.maximum(scale, jnp.finfo(dtype).tiny)
    any_broke = broke if axis_name is None else jax.lax.psum(broke.astype(jnp.int32),
                                                             axis_name) > 0
    nxt = jax.lax.cond(any_broke, restart, lambda b, w, beta, _: [x / beta for x in w],
                       basis, w, beta, broke)
    return ([b.at[j + 1].set(n) for b, n in zip(basis, nxt)],
            alphas.at[j].set(alpha), betas.at[j].set(jnp.where(broke, 0.0, beta)))

  zeros = jnp.zeros((steps,), dtype)
  basis, alphas, betas = jax.lax.fori_loop(0, steps, step, (basis, zeros, zeros))
  return alphas, betas, jax.tree_util.tree_unflatten(
      treedef, [b[:steps].reshape((steps,) + s) for b, s in zip(basis, shapes)])


def slq(hvp, like, steps: int, vectors: int, key, axis_name=None):
  """Stochastic Lanczos quadrature (Ghorbani et al. 2019), the compiled part.

  Returns (alphas, betas), each (vectors, steps): the tridiagonal matrix of
  each Rademacher start vector (a tree shaped like `like`);
  ``gauss_quadrature`` turns them into the density. Vectors run one after
  another, so only one basis is held.
  """
  def one(k):
    return lanczos(hvp, rademacher(k, like), steps, axis_name)[:2]
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


def hutchinson_trace(hvp, like, samples: int, key):
  """Hutchinson's estimate of tr(H): the mean of z^T H z over Rademacher z
  shaped like `like`."""
  def one(k):
    z = rademacher(k, like)
    return tree_dot(z, hvp(z))
  return jnp.mean(jax.lax.map(one, jax.random.split(key, samples)))


def moments(nodes, weights, orders):
  """SLQ spectral density moments: mean over vectors of sum_j weights * nodes**k."""
  return np.stack([np.mean(np.sum(weights * nodes ** k, axis=-1)) for k in orders])
