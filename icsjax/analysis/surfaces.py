"""Loss surfaces around a trained model (Li et al. 2018) and between two models.

Directions are filter-normalised: a random Gaussian direction is rescaled,
filter by filter, to the norm of the weights it perturbs, so that surfaces
of networks with different weight scales (BN makes a layer scale-invariant)
can be compared. A filter is one output unit of a kernel (its last axis,
for dense and convolution kernels alike). Biases and norm parameters (every
1-D leaf) get a zero direction, as in Li et al. Losses are evaluated with
whatever ``loss_fn`` the caller gives; ``eval_mode_loss`` is BN in eval mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icsjax import losses


def filter_normalised_direction(key, params):
  """A random direction shaped like params, each kernel filter scaled to its
  weights' norm; zero for biases and norm parameters."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))

  def one(k, w):
    if w.ndim < 2:
      return jnp.zeros_like(w)
    d = jax.random.normal(k, w.shape, w.dtype)
    axes = tuple(range(w.ndim - 1))  # all but the output axis: one norm per filter
    norm = lambda a: jnp.sqrt(jnp.sum(jnp.square(a), axis=axes, keepdims=True))
    return d * (norm(w) / norm(d))
  return jax.tree_util.tree_unflatten(treedef, [one(k, w) for k, w in zip(keys, leaves)])


def _along(params, directions, coefficients):
  return jax.tree_util.tree_map(
      lambda p, *ds: p + sum(c * d for c, d in zip(coefficients, ds)), params, *directions)


def surface_1d(loss_fn, params, direction, alphas):
  """loss_fn(params + alpha * direction) for each alpha, shape (len(alphas),)."""
  return jax.lax.map(lambda a: loss_fn(_along(params, (direction,), (a,))), jnp.asarray(alphas))


def surface_2d(loss_fn, params, d1, d2, alphas, betas):
  """loss_fn(params + alpha d1 + beta d2), shape (len(alphas), len(betas))."""
  return jax.lax.map(
      lambda a: jax.lax.map(lambda b: loss_fn(_along(params, (d1, d2), (a, b))),
                            jnp.asarray(betas)),
      jnp.asarray(alphas))


def interpolate(loss_fn, params_a, params_b, ts):
  """loss_fn((1 - t) a + t b) for each t: t = 0 is a, t = 1 is b."""
  return jax.lax.map(
      lambda t: loss_fn(jax.tree_util.tree_map(lambda a, b: (1 - t) * a + t * b,
                                               params_a, params_b)),
      jnp.asarray(ts))


def eval_mode_loss(module, batch_stats, x, y, task, hp=None):
  """The loss on (x, y) as a function of parameters, norms in eval mode
  (running statistics, no noise)."""
  def loss(params):
    out, _ = module.apply({"params": params, "batch_stats": batch_stats}, x, train=False,
                          hp=hp or {})
    return losses.task_loss(out, y, task)[0]
  return loss
