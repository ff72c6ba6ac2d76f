"""Internal covariate shift as gradient change (Santurkar et al. 2018, Def. 2.1).

For weight layer i, G_i is the gradient of the step's loss with respect to
its kernel at the parameters before the update, and G'_i the same gradient
after this step's real update has been applied to layers 1..i-1 only (same
batch, train mode, same noise draw). A layer owns its kernel and bias and the
scale and bias of the norm that follows it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from icsjax.probes.evaluations import each


def layer_of(param_name: str, weight_layers: tuple[str, ...]) -> int:
  """Index of the weight layer that owns a top-level parameter collection
  (``norm_i`` belongs to the i-th normalised layer, which is weight layer i)."""
  if param_name.startswith("norm_"):
    return int(param_name.split("_")[1])
  return weight_layers.index(param_name)


def mixed_params(old, new, layer, weight_layers: tuple[str, ...]):
  """Parameters with layers before `layer` (an int or a traced scalar) updated and
  the rest as before."""
  return {name: jax.tree_util.tree_map(
              lambda o, n, updated=layer_of(name, weight_layers) < layer: jnp.where(updated, n, o),
              old[name], new[name])
          for name in old}


def change(g, g_new):
  """(||G - G'||, ||G - G'|| / ||G||, cos(G, G')) of two gradient arrays."""
  diff = jnp.linalg.norm((g - g_new).ravel())
  norm, norm_new = jnp.linalg.norm(g.ravel()), jnp.linalg.norm(g_new.ravel())
  return jnp.stack([diff, diff / norm, jnp.vdot(g, g_new) / (norm * norm_new)])


def gradient_ics(grad_fn, params, new_params, grads, weight_layers: tuple[str, ...],
                 in_sequence: bool = True):
  """Per weight layer: {ics_grad_diff, ics_grad_diff_relative, ics_grad_cosine}, (layer,).

  grad_fn(params) is the step's train-mode gradient function with its noise
  fixed; grads = grad_fn(params), already computed by the training step. The
  layers take one full gradient each, in sequence or at once
  (``evaluations.each``); either way a deep network compiles one gradient
  rather than one per layer. The first layer has no layer before it: G' = G
  there exactly, at no cost.
  """
  def layer_change(i):
    g_new = grad_fn(mixed_params(params, new_params, i, weight_layers))
    # In sequence the switch runs one branch; at once (i batched) a select of
    # every layer's three numbers.
    return jax.lax.switch(i, [lambda n=n: change(grads[n]["kernel"], g_new[n]["kernel"])
                              for n in weight_layers])

  first = jnp.array([0.0, 0.0, 1.0], grads[weight_layers[0]]["kernel"].dtype)
  rest = each(layer_change, jnp.arange(1, len(weight_layers)), in_sequence)
  diff, rel, cos = jnp.concatenate([first[None], rest]).T
  return {"ics_grad_diff": diff, "ics_grad_diff_relative": rel, "ics_grad_cosine": cos}


def records(spec, fns, at):
  """Gradient-ICS of update `at.step` itself: its batch, noise draw, parameters
  before it and real update."""
  u = at.update
  grad_fn = jax.grad(lambda p: fns.loss(p, u.batch_stats, u.x, u.y, u.noise)[0])
  return gradient_ics(grad_fn, u.params, optax.apply_updates(u.params, u.updates), u.grads,
                      spec.weight_layers, spec.probes_in_sequence)
