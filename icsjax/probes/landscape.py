"""The loss landscape along the update direction (Santurkar et al. 2018, Fig. 4).

With d = -update / lr, the point at step size eta = c * lr is
theta - eta * d = theta + c * update, so only the multiples c enter and SGD's
d is the gradient. Loss variation is max - min over the base point and every
eta; gradient predictiveness is ||grad L(theta) - grad L(theta - eta d)|| per
eta; effective beta-smoothness is the largest of those over ||eta d||.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icsjax.probes.evaluations import each


def tree_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def along_update(loss_and_grad_fn, params, update, base_loss, base_grads,
                 lr_multiples: tuple[float, ...], in_sequence: bool = True):
  """Landscape records of one step, a gradient per eta: the etas in sequence or
  at once (``evaluations.each``)."""
  def at(c):
    point = jax.tree_util.tree_map(lambda p, u: p + c * u, params, update)
    loss, grads = loss_and_grad_fn(point)
    return loss, tree_norm(jax.tree_util.tree_map(jnp.subtract, base_grads, grads))

  multiples = jnp.asarray(lr_multiples, base_loss.dtype)
  losses, grad_diffs = each(at, multiples, in_sequence)
  update_norm = tree_norm(update)
  all_losses = jnp.concatenate([base_loss[None], losses])
  return {"landscape_loss": losses,
          "landscape_grad_diff": grad_diffs,
          "landscape_loss_variation": jnp.max(all_losses) - jnp.min(all_losses),
          "landscape_beta_smoothness": jnp.max(grad_diffs / (multiples * update_norm)),
          "landscape_update_norm": update_norm}
