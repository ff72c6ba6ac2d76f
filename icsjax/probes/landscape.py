"""The loss landscape along the update direction (Santurkar et al. 2018, Fig. 4).

With d = -update / lr, the point at step size eta = c * lr is
theta - eta * d = theta + c * update, so only the multiples c enter and SGD's
d is the gradient. Loss variation is max - min over the base point and every
eta; gradient predictiveness is ||grad L(theta) - grad L(theta - eta d)|| per
eta; effective beta-smoothness is the largest of those over ||eta d||. The
relative measures divide the variation by L(theta) and each gradient
difference by ||grad L(theta)||, factoring out how far training has got.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from optax import tree_utils

from icsjax.probes.evaluations import each


def along_update(loss_and_grad_fn, params, update, base_loss, base_grads,
                 lr_multiples: tuple[float, ...], in_sequence: bool = True):
  """Landscape records of one step, a gradient per eta: the etas in sequence or
  at once (``evaluations.each``)."""
  def at(c):
    loss, grads = loss_and_grad_fn(tree_utils.tree_add_scale(params, c, update))
    return loss, tree_utils.tree_norm(tree_utils.tree_sub(base_grads, grads))

  multiples = jnp.asarray(lr_multiples, base_loss.dtype)
  losses, grad_diffs = each(at, multiples, in_sequence)
  update_norm = tree_utils.tree_norm(update)
  all_losses = jnp.concatenate([base_loss[None], losses])
  variation = jnp.max(all_losses) - jnp.min(all_losses)
  return {"landscape_loss": losses,
          "landscape_grad_diff": grad_diffs,
          "landscape_loss_variation": variation,
          "landscape_loss_variation_relative": variation / base_loss,
          "landscape_grad_diff_relative": grad_diffs / tree_utils.tree_norm(base_grads),
          "landscape_beta_smoothness": jnp.max(grad_diffs / (multiples * update_norm)),
          "landscape_update_norm": update_norm}


def records(spec, fns, at):
  """Landscape records along update `at.step`, on its batch with its noise draw."""
  u = at.update
  loss_and_grad = jax.value_and_grad(lambda p: fns.loss(p, u.batch_stats, u.x, u.y, u.noise)[0])
  return along_update(loss_and_grad, u.params, u.updates, u.loss, u.grads,
                      spec.run.landscape_lr_multiples, spec.probes_in_sequence)
