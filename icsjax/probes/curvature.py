"""Curvature from Hessian-vector products: Lanczos, stochastic Lanczos
quadrature (SLQ) and Hutchinson's trace (docs/measurements.md, "Curvature").

Lanczos and SLQ take ``hvp``, a map from a vector to the Hessian times it;
Hutchinson takes ``quadratic_form``, z -> z^T H z. The vectors are pytrees: a
network's parameters (``tree_hvp``, ``tree_quadratic_form``) or, in tests, one
flat array with an explicit matrix. Products and random vectors
work on the tree itself; Lanczos keeps its basis as one matrix of raveled
vectors (see ``lanczos``). Random vectors come from a key; nothing here
knows about models or steps.

The compiled loop keeps Lanczos's tridiagonal matrices; their small
eigen-decompositions (``gauss_quadrature``) run in NumPy on the host, once per
segment (``spectrum_records``): inside the loop, LAPACK's batched eigh runs on
a thread pool that two CPU devices can deadlock on.
"""

from __future__ import annotations

import functools

from typing import Any

import jax
import numpy as np
import jax.numpy as jnp
from flax import struct
from jax.flatten_util import ravel_pytree

from icsjax import keys
from icsjax.probes.evaluations import each

# A Lanczos step whose new direction keeps less than this share of |H v| has run
# out of Krylov space; it restarts there. In float32 an exhausted space still
# leaves up to ~1e-4 of |H v| (a 12 x 12 test matrix with a 6-fold eigenvalue),
# and a coupling this small, zeroed, moves no Ritz value by more than it.
BREAKDOWN = 1e-3


def tree_hvp(loss_fn, params):
  """The Hessian-vector product of loss_fn at params, on trees shaped like
  params: forward-over-reverse. The primal gradient does not depend on the
  vector, so XLA computes it once outside a loop of products."""
  grad_fn = jax.grad(loss_fn)
  return lambda v: jax.jvp(grad_fn, (params,), (v,))[1]


def tree_quadratic_form(loss_fn, params):
  """z -> z^T H z of loss_fn at params: its second derivative along z, forward
  over forward. Hutchinson needs only this number, and two forward-mode passes
  skip the backward pass of a Hessian-vector product."""
  def along(p, z):
    return jax.jvp(loss_fn, (p,), (z,))[1]
  return lambda z: jax.jvp(lambda p: along(p, z), (params,), (z,))[1]


def rademacher(key, like, dtype=jnp.float32):
  """A tree of independent +-1 entries shaped like `like`, one random bit
  each: threefry makes 32 bits per output, and an output per entry would cost
  more than a Hessian-vector product."""
  leaves, treedef = jax.tree_util.tree_flatten(like)
  sizes = [int(np.prod(np.shape(leaf))) for leaf in leaves]
  words = jax.random.bits(key, (-(-sum(sizes) // 32),), jnp.uint32)
  bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  signs = (1 - 2 * bits.astype(dtype)).reshape(-1)
  offsets = np.cumsum([0] + sizes)
  return jax.tree_util.tree_unflatten(treedef, [
      signs[o:o + n].reshape(np.shape(leaf)) for o, n, leaf in zip(offsets, sizes, leaves)])


def ravel_leaf_by_leaf(tree, size: int, dtype):
  """ravel_pytree's vector, written one leaf at a time into a zero vector. A
  CPU compiles the concatenation of an unbatched tree into one slow loop that
  picks a leaf per element; under vmap the concatenation is the faster one."""
  flat, offset = jnp.zeros((size,), dtype), 0
  for leaf in jax.tree_util.tree_leaves(tree):
    flat = jax.lax.dynamic_update_slice(flat, leaf.reshape(-1).astype(dtype), (offset,))
    offset += leaf.size
  return flat


def lanczos(hvp, v0, steps: int, unbatched: bool = False):
  """Lanczos tridiagonalisation with full reorthogonalisation.

  v0 is a tree (a flat vector is a tree of one leaf). Returns (alphas,
  betas, basis): T's diagonal (steps,), its off-diagonal (steps,; the last
  entry couples to no further row) and the orthonormal basis, a tree of
  (steps, *leaf shape). Each step takes the three-term recurrence, then one
  classical Gram-Schmidt pass against the whole basis (Paige's full
  reorthogonalisation). The basis is one (steps, parameters) matrix of
  raveled vectors, so that pass is two matrix-vector products (one matrix
  per parameter leaf ran slower: benchmarks/curvature_parts.py). The basis is
  read twice a step, at float32 precision: a TF32 product would leave the new
  vector far from orthogonal.

  When the Krylov space of v0 is exhausted (an invariant subspace: the
  recurrence leaves less than BREAKDOWN of |H v|), the next direction is a new
  one orthogonal to the basis and its coupling is 0: T becomes block
  diagonal, every Ritz value stays a true eigenvalue estimate, and the
  quadrature weights of v0 (first components) fall on the first block. That
  direction is the least covered of the first 2 (steps + 1) coordinate axes
  (covered: the basis's squared entries summed over rows; at most j + 1 rows
  share a total coverage of j + 1, so the axis keeps at least half of its
  length, or (dim - rows) / dim when dim is smaller), projected out of the
  basis by the same Gram-Schmidt pass as any other step. A select, not a
  branch, picks it: under vmap a branch on a per-model value runs both sides,
  and one on an "any model" value costs a collective and, on a GPU, a host
  round trip every step.

  ``unbatched``: the caller runs this outside any vmap (the CPU probe, one
  model per device at a time), where each product is raveled leaf by leaf
  (``ravel_leaf_by_leaf``).
  """
  x0, unravel = ravel_pytree(v0)
  dtype, size = x0.dtype, x0.size
  candidates = min(size, 2 * (steps + 1))
  dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
  basis = jnp.zeros((steps, size), dtype).at[0].set(x0 / jnp.sqrt(dot(x0, x0)))

  def step(j, carry):
    basis, alphas, betas = carry
    v, v_prev = basis[j], basis[jnp.maximum(j - 1, 0)]
    w = hvp(unravel(v))
    w = ravel_leaf_by_leaf(w, size, dtype) if unbatched else ravel_pytree(w)[0]
    alpha = dot(v, w)
    beta_prev = jnp.where(j > 0, betas[jnp.maximum(j - 1, 0)], 0.0)
    w = w - alpha * v - beta_prev * v_prev
    coefficients, rest = dot(basis, w), dot(w, w)
    # What the Gram-Schmidt pass will leave of w (Pythagoras), against |H v|^2 =
    # alpha^2 + beta_prev^2 + |w|^2 (w is orthogonal to v and v_prev).
    broke = rest - dot(coefficients, coefficients) <= BREAKDOWN ** 2 * jnp.maximum(
        alpha ** 2 + beta_prev ** 2 + rest, jnp.finfo(dtype).tiny)
    axis = jnp.argmin(jnp.sum(jnp.square(basis[:, :candidates]), axis=0))
    # The restart axis's coefficients are its column of the basis.
    w = (jnp.where(broke, (jnp.arange(size) == axis).astype(dtype), w)
         - dot(jnp.where(broke, basis[:, axis], coefficients), basis))
    beta = jnp.sqrt(dot(w, w))
    # Step j writes row j + 1; the last step's vector is not needed, only its beta.
    row = jnp.minimum(j + 1, steps - 1)
    new_row = jnp.where(j + 1 < steps, w / beta, basis[row])
    return (jax.lax.dynamic_update_index_in_dim(basis, new_row, row, 0),
            alphas.at[j].set(alpha), betas.at[j].set(jnp.where(broke, 0.0, beta)))

  zeros = jnp.zeros((steps,), dtype)
  basis, alphas, betas = jax.lax.fori_loop(0, steps, step, (basis, zeros, zeros))
  return alphas, betas, jax.vmap(unravel)(basis)


def own_draw(draw, key, like, fill=0.0):
  """draw(key, like): how a network alone draws its random vectors (a padded
  program's models draw through icsjax.forward.ModelFns.random_like instead)."""
  return draw(key, like)


def slq(hvp, like, steps: int, vectors: int, key, in_sequence: bool = True,
        random_like=own_draw):
  """Stochastic Lanczos quadrature (Ghorbani et al. 2019), the compiled part.

  Returns (alphas, betas), each (vectors, steps): the tridiagonal matrix of
  each Rademacher start vector (a tree shaped like `like`);
  ``gauss_quadrature`` turns them into the density. Vectors run one after
  another (one basis held; the caller runs the model unbatched, as the CPU
  probe does) or, with in_sequence False, all at once (``evaluations.each``).
  `random_like` draws the start vectors (``own_draw``).
  """
  def one(k):
    return lanczos(hvp, random_like(rademacher, k, like), steps, unbatched=in_sequence)[:2]
  return each(one, jax.random.split(key, vectors), in_sequence)


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


def tridiagonal_lambda_max(alphas, betas, points: int = 31, rounds: int = 8):
  """The largest eigenvalue of one symmetric tridiagonal matrix (Lanczos's
  alphas (steps,) and betas (steps,), the last beta unused), in the compiled
  program: multisection on Sturm counts, NaN if any entry is not finite.

  The count of eigenvalues below x is the count of negative pivots of the LDL^T
  factorisation of T - x I (Sylvester's law of inertia), d_1 = a_1 - x,
  d_j = a_j - x - b_{j-1}^2 / d_{j-1}; it is exact for a matrix within a few
  roundings of T (Kahan 1966), so the bracket ends within a few roundings of
  ||T|| of lambda_max. Each round splits the bracket, from Gershgorin's, at
  `points` points at once; 8 rounds of 31 shrink it 2^40-fold, past float32
  resolution. No eigensolver: LAPACK's, inside the loop, can deadlock two CPU
  devices (``spectrum_records``)."""
  steps, dtype = alphas.shape[0], alphas.dtype
  couplings = jnp.abs(betas[:-1])
  radius = jnp.pad(couplings, (1, 0)) + jnp.pad(couplings, (0, 1))
  squares = jnp.pad(jnp.square(couplings), (1, 0))  # b_{j-1}^2, 0 for the first row
  # LAPACK's dstebz: a pivot this close to 0 is taken as a small negative one.
  pivmin = jnp.finfo(dtype).tiny * jnp.maximum(1.0, jnp.max(squares))
  fractions = jnp.arange(1, points + 1, dtype=dtype) / (points + 1)

  def below(x):
    def pivot(d, row):
      a, b2 = row
      d = a - x - b2 / d
      d = jnp.where(jnp.abs(d) < pivmin, -pivmin, d)
      return d, d < 0
    return jnp.sum(jax.lax.scan(pivot, jnp.ones_like(x), (alphas, squares))[1], axis=0)

  def split(_, bracket):
    lo, hi = bracket
    x = lo + (hi - lo) * fractions
    above_max = below(x) == steps
    return (jnp.max(jnp.where(above_max, lo, x)), jnp.min(jnp.where(above_max, x, hi)))

  lo, hi = jax.lax.fori_loop(0, rounds, split,
                             (jnp.min(alphas - radius), jnp.max(alphas + radius)))
  finite = jnp.all(jnp.isfinite(alphas)) & jnp.all(jnp.isfinite(betas))
  return jnp.where(finite, (lo + hi) / 2, jnp.nan)


def with_kernel(params, name: str, kernel):
  """params with layer `name`'s kernel replaced."""
  return {**params, name: {**params[name], "kernel": kernel}}


def layer_start_vectors(key, kernels, names: tuple[str, ...]):
  """{name: {"kernel": Rademacher vector}} for each layer of `kernels` ({name:
  {"kernel": array}}), the keys split from `key` in the order of `names`."""
  present = [n for n in names if n in kernels]
  return {n: {"kernel": rademacher(k, kernels[n]["kernel"], kernels[n]["kernel"].dtype)}
          for n, k in zip(present, jax.random.split(key, len(present)))}


def layer_lambda_max(loss_fn, params, names: tuple[str, ...], steps: int, key,
                     in_sequence: bool = True, random_like=own_draw):
  """Per layer in `names`: the largest eigenvalue of H_ii, the Hessian of
  loss_fn with respect to that layer's kernel alone (every other parameter
  held), from `steps` Lanczos steps (at most the kernel's size: then exact)
  from a Rademacher start vector (`layer_start_vectors`, drawn by
  `random_like`; 1 where a padded program's network lacks the layer);
  (len(names),). The layers run one after another, each on a basis of its
  kernel's size."""
  kernels = {name: {"kernel": params[name]["kernel"]} for name in names}
  starts = random_like(lambda k, like: layer_start_vectors(k, like, names), key, kernels, 1.0)
  out = []
  for name in names:
    kernel = params[name]["kernel"]
    hvp = tree_hvp(lambda w, name=name: loss_fn(with_kernel(params, name, w)), kernel)
    alphas, betas, _ = lanczos(hvp, starts[name]["kernel"], min(steps, kernel.size),
                               unbatched=in_sequence)
    out.append(tridiagonal_lambda_max(alphas, betas))
  return jnp.stack(out)


def spectrum_records(alphas, betas) -> dict:
  """The curvature records derived from the tridiagonals (..., vectors, steps)."""
  nodes, weights = gauss_quadrature(alphas, betas)
  return {"slq_nodes": nodes.astype(np.float32), "slq_weights": weights.astype(np.float32),
          "hessian_lambda_max": nodes.max(axis=(-2, -1)).astype(np.float32),
          "hessian_lambda_min": nodes.min(axis=(-2, -1)).astype(np.float32)}


def hutchinson_trace(quadratic_form, like, samples: int, key, in_sequence: bool = True,
                     random_like=own_draw):
  """Hutchinson's estimate of tr(H): the mean of quadratic_form(z) = z^T H z
  over Rademacher z shaped like `like` (drawn by `random_like`), the samples in
  sequence or at once (``evaluations.each``)."""
  def one(k):
    return quadratic_form(random_like(rademacher, k, like))
  return jnp.mean(each(one, jax.random.split(key, samples), in_sequence))


def moments(nodes, weights, orders):
  """SLQ spectral density moments: mean over vectors of sum_j weights * nodes**k."""
  return np.stack([np.mean(np.sum(weights * nodes ** k, axis=-1)) for k in orders])


# Slack over the Lanczos basis (steps x parameters floats) for the work arrays of
# a Hessian-vector product and the eigen-decomposition, per model.
MEMORY_FACTOR = 1.5


def bytes_per_model(num_params: int, lanczos_steps: int, slq_vectors: int = 1,
                    hutchinson_samples: int = 0, layer_lanczos_steps: int = 0) -> int:
  """Memory the probe holds per model, with slack: its Lanczos bases
  (slq_vectors of them, when the vectors run at once) or, if larger, the
  vector of each of hutchinson_samples run at once, doubled for the forward-
  mode work arrays of its z^T H z (Hutchinson follows SLQ, so the two take
  turns with the memory), or the per-layer Lanczos bases (``layer_lambda_max``):
  layer_lanczos_steps x each kernel's size, at most one basis of that many
  steps over all parameters even if they were all held at once."""
  floats = max(lanczos_steps * slq_vectors, 2 * hutchinson_samples,
               layer_lanczos_steps) * num_params
  return int(MEMORY_FACTOR * 4 * floats)


def eos_threshold(optimizer: str, lr, momentum):
  """The edge-of-stability sharpness 2/lr (GD) or (2 + 2 beta)/lr (heavy ball,
  Cohen et al. 2021); NaN for Adam, whose threshold is on the preconditioned
  Hessian, which this probe does not measure."""
  if optimizer == "sgd":
    return 2.0 / lr
  if optimizer == "momentum":
    return (2.0 + 2.0 * momentum) / lr
  return np.full_like(lr, np.nan)


def optimizer_constants(optimizer: str, hparams) -> dict:
  """Per model: the momentum (Adam: b1; SGD: 0) and the edge-of-stability threshold."""
  momentum = {"sgd": 0.0 * hparams["lr"], "momentum": hparams["momentum"],
              "adam": hparams["b1"]}[optimizer]
  return {"optimizer_momentum": momentum,
          "eos_threshold": eos_threshold(optimizer, hparams["lr"], momentum)}


class ProbeInputs(struct.PyTreeNode):
  """What the probe reads of one model: passed explicitly, so that a CPU can
  run it one model per device (icsjax.placement.one_model_per_device)."""
  params: Any
  batch_stats: Any
  x: jax.Array          # the fixed probe batch
  y: jax.Array
  noise_key: Any        # frozen for the whole probe (None without noise)
  vector_key: jax.Array
  layer_vector_key: jax.Array  # the per-layer Lanczos start vectors


def inputs(spec, fns, at) -> ProbeInputs:
  """The state after update `at.step`, on the first curvature_batch_size training
  examples, with this step's probe noise and random vectors."""
  b = spec.run.curvature_batch_size
  state = at.state
  return ProbeInputs(state.params, state.batch_stats, at.data.train_x[:b], at.data.train_y[:b],
                     fns.noise_key(state, at.step, keys.CURVATURE_NOISE),
                     keys.draw_key(state.noise_key, at.step, keys.CURVATURE_VECTORS),
                     keys.draw_key(state.noise_key, at.step, keys.CURVATURE_LAYER_VECTORS))


def records(spec, fns, probe: ProbeInputs):
  """Lanczos tridiagonals (SLQ), trace, per-layer norms and per-layer
  sharpness on the probe batch, train mode, noise frozen. The spectrum itself
  comes from the tridiagonals on the host (``spectrum_records``)."""
  noise = fns.draw_noise(probe.params, probe.batch_stats, probe.x, probe.noise_key)
  loss_fn = lambda p: fns.loss(p, probe.batch_stats, probe.x, probe.y, noise)[0]
  params = probe.params
  hvp = tree_hvp(loss_fn, params)
  k_slq, k_trace = jax.random.split(probe.vector_key)
  run, in_sequence = spec.run, spec.probes_in_sequence
  alphas, betas = slq(hvp, params, run.lanczos_steps, run.slq_vectors, k_slq, in_sequence,
                      fns.random_like)
  loss, grads = jax.value_and_grad(loss_fn)(params)
  kernel_norm = lambda tree: jnp.stack([jnp.linalg.norm(tree[name]["kernel"].ravel())
                                        for name in spec.weight_layers])
  layer_max = layer_lambda_max(loss_fn, params, spec.weight_layers, run.layer_lanczos_steps,
                               probe.layer_vector_key, in_sequence, fns.random_like)
  weight_norm = kernel_norm(params)
  return {"lanczos_alpha": alphas, "lanczos_beta": betas,
          "hessian_trace": hutchinson_trace(tree_quadratic_form(loss_fn, params), params,
                                            run.hutchinson_samples, k_trace, in_sequence,
                                            fns.random_like),
          "probe_loss": loss, "probe_grad_norm": kernel_norm(grads),
          "weight_norm": weight_norm, "layer_lambda_max": layer_max,
          "layer_sharpness_scaled": jnp.square(weight_norm) * layer_max}
