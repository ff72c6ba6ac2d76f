"""The pytrees a training loop carries and hands to record kinds."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


class ModelState(struct.PyTreeNode):
  """Everything one model's training needs to go on (what a checkpoint holds)."""
  params: Any
  batch_stats: Any
  opt_state: Any
  noise_key: jax.Array
  diverged_step: jax.Array  # int32: the step whose loss or update was not finite; 0 if none


class StepInternals(struct.PyTreeNode):
  """What one training step computed, kept for the kinds that read the update itself."""
  params: Any        # before the update
  batch_stats: Any   # before the update
  x: jax.Array
  y: jax.Array
  noise: Any         # the step's noise draw (ModelFns.draw_noise; None without noise)
  loss: jax.Array
  grads: Any
  updates: Any
  moments: Any       # per layer and unit: {preact,nonlin_input}_{mean,var} of its batch


class Moment(struct.PyTreeNode):
  """One model at the end of update `step`: what a record kind may read."""
  state: ModelState        # after the update
  step: jax.Array          # the update's 1-based number
  update: StepInternals    # the update itself
  data: Any                # the group's icsjax.data.Dataset
