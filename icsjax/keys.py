"""Random keys by purpose, so that every draw of a run is reproducible and
models that share a seed index share what they should (data order, initial
weights) and nothing else."""

from __future__ import annotations

import jax

# Purposes of a seed index's keys, shared by every model of that seed index.
INIT, DATA, NOISE = 0, 1, 2
# Purposes folded into a model's (noise key, step): the step's own noise, the
# monitor pass, the curvature probe's frozen noise, its random vectors and the
# start vectors of its per-layer Lanczos runs.
STEP, MONITOR, CURVATURE_NOISE, CURVATURE_VECTORS, CURVATURE_LAYER_VECTORS = 0, 1, 2, 3, 4


def seed_key(base_seed: int, seed_index, purpose: int):
  """The key of one seed index for one purpose."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(base_seed), seed_index),
                            purpose)


def draw_key(noise_key, step, purpose: int):
  """The key of one purpose at one step of one model (noise_key: the model's root)."""
  return jax.random.fold_in(jax.random.fold_in(noise_key, step), purpose)
