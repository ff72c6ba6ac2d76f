"""In-loop probes (DESIGN.md B.2-B.4), run once per probe interval for every model.

``ics`` and ``landscape`` read one training step: its batch, noise draw,
parameters before the update, gradient and real update (``StepInternals``).
``curvature`` reads the state after the step on a fixed probe batch. Each
returns a dict of per-model arrays; icsjax.train decides when they run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from icsjax.probes import curvature as curvature_lib
from icsjax.probes.ics import gradient_ics
from icsjax.probes.landscape import along_update

# Slack over the Lanczos basis (steps x parameters floats) for the work arrays of
# a Hessian-vector product and the eigen-decomposition, per model.
CURVATURE_MEMORY_FACTOR = 1.5


class StepInternals(struct.PyTreeNode):
  """What one training step computed, kept for the probes that read it."""
  params: Any        # before the update
  batch_stats: Any   # before the update
  x: jax.Array
  y: jax.Array
  noise_key: Any     # the step's noise draw (None without noise)
  loss: jax.Array
  grads: Any
  updates: Any


def ics_records(program, hp, inside: StepInternals):
  grad_fn = jax.grad(lambda p: program.loss(p, inside.batch_stats, inside.x, inside.y, hp,
                                            inside.noise_key)[0])
  return gradient_ics(grad_fn, inside.params, optax.apply_updates(inside.params, inside.updates),
                      inside.grads, program.weight_layers, program.probes_in_sequence)


def landscape_records(program, hp, inside: StepInternals, lr_multiples):
  loss_and_grad = jax.value_and_grad(
      lambda p: program.loss(p, inside.batch_stats, inside.x, inside.y, hp, inside.noise_key)[0])
  return along_update(loss_and_grad, inside.params, inside.updates, inside.loss, inside.grads,
                      lr_multiples, program.probes_in_sequence)


def curvature_records(program, hp, params, batch_stats, x, y, noise_key, vector_key):
  """Lanczos tridiagonals (SLQ), trace and per-layer norms on the probe batch
  (x, y), train mode, noise frozen at noise_key. The spectrum itself comes
  from the tridiagonals on the host (``curvature.spectrum_records``)."""
  loss_fn = lambda p: program.loss(p, batch_stats, x, y, hp, noise_key)[0]
  hvp = curvature_lib.tree_hvp(loss_fn, params)
  k_slq, k_trace = jax.random.split(vector_key)
  run, in_sequence = program.run, program.probes_in_sequence
  alphas, betas = curvature_lib.slq(hvp, params, run.lanczos_steps, run.slq_vectors, k_slq,
                                    in_sequence)
  loss, grads = jax.value_and_grad(loss_fn)(params)
  kernel_norm = lambda tree: jnp.stack([jnp.linalg.norm(tree[name]["kernel"].ravel())
                                        for name in program.weight_layers])
  return {"lanczos_alpha": alphas, "lanczos_beta": betas,
          "hessian_trace": curvature_lib.hutchinson_trace(
              curvature_lib.tree_quadratic_form(loss_fn, params), params,
              run.hutchinson_samples, k_trace, in_sequence),
          "probe_loss": loss, "probe_grad_norm": kernel_norm(grads),
          "weight_norm": kernel_norm(params)}


def curvature_bytes_per_model(num_params: int, lanczos_steps: int, slq_vectors: int = 1,
                              hutchinson_samples: int = 0) -> int:
  """Memory the curvature probe holds per model, with slack: its Lanczos bases
  (slq_vectors of them, when the vectors run at once) or, if larger, the
  vector of each of hutchinson_samples run at once, doubled for the forward-
  mode work arrays of its z^T H z (Hutchinson follows SLQ, so the two take
  turns with the memory)."""
  floats = max(lanczos_steps * slq_vectors, 2 * hutchinson_samples) * num_params
  return int(CURVATURE_MEMORY_FACTOR * 4 * floats)


def eos_threshold(optimizer: str, lr, momentum):
  """The edge-of-stability sharpness 2/lr (GD) or (2 + 2 beta)/lr (heavy ball,
  Cohen et al. 2021); NaN for Adam, whose threshold is on the preconditioned
  Hessian, which these probes do not measure."""
  if optimizer == "sgd":
    return 2.0 / lr
  if optimizer == "momentum":
    return (2.0 + 2.0 * momentum) / lr
  return jnp.full_like(lr, jnp.nan)
