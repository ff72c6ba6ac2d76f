"""One model's forward pass and loss as closures over its group and its
per-model hyperparameters: what the training step and every record kind call.

Hyperparameters (``hp``: learning rate, BN momentum, noise magnitudes, ...)
arrive as traced scalars, so a vmapped group sweeps them without recompiling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, NamedTuple

import jax.numpy as jnp

from icsjax import keys
from icsjax import losses
from icsjax import padding
from icsjax.norms import ADAPT_MEAN_WEIGHT, ADAPT_SCALE_WEIGHT, batch_moments, variant_index
from icsjax.spec import GroupSpec


class ModelFns(NamedTuple):
  # noise: a noise key, the noise a key draws (draw_noise), or None (no noise)
  apply: Callable    # (params, batch_stats, x, *, train, noise=None) -> (outputs, taps, stats)
  loss: Callable     # (params, batch_stats, x, y, noise) -> (loss, (accuracy, taps, stats))
  adapted: Callable  # (params, batch_stats, x, weights) -> (outputs, adapted batch_stats)
  noise_key: Callable  # (state, step, purpose) -> the norm's noise key, or None without noise
  draw_noise: Callable  # (params, batch_stats, x, noise_key) -> what that key draws, or None
  # (draw, key, like, fill=0.) -> draw(key, like) for a tree `like` shaped as (part
  # of) the parameters; in a padded program drawn at the model's own shapes.
  random_like: Callable
  # Per normalised layer, (units,) bool of its real units; None: every unit is.
  unit_masks: tuple | None


def model_fns(spec: GroupSpec, hp) -> ModelFns:
  model = spec.model

  def apply(params, batch_stats, x, *, train: bool, noise=None):
    """Forward pass: (outputs, taps, new batch_stats). Train mode normalises by
    batch statistics (and adds noise when `noise` is given: a key to draw it
    from, or `draw_noise`'s draw); eval mode by the running ones."""
    variables = {"params": params, "batch_stats": batch_stats}
    rngs = {}
    if isinstance(noise, Mapping):
      variables["noise"] = noise
    elif noise is not None:
      rngs = {"noise": noise}
    if train:
      (out, taps), updated = model.apply(variables, x, train=True, hp=hp, rngs=rngs,
                                         mutable=["batch_stats"])
      return out, taps, updated.get("batch_stats", {})
    out, taps = model.apply(variables, x, train=False, hp=hp)
    return out, taps, batch_stats

  def loss(params, batch_stats, x, y, noise):
    """Train-mode loss of a batch: (loss, (accuracy, taps, updated batch_stats))."""
    out, taps, new_stats = apply(params, batch_stats, x, train=True, noise=noise)
    value, acc = losses.task_loss(out, y, spec.task)
    return value, (acc, taps, new_stats)

  def adapted(params, batch_stats, x, weights):
    """Eval mode with each norm's statistics mixed with x's own by weights
    (w_mean, w_scale) (BN adaptation): (outputs, the mixed statistics)."""
    mixed_hp = {**hp, ADAPT_MEAN_WEIGHT: weights[0], ADAPT_SCALE_WEIGHT: weights[1]}
    (out, _), updated = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                    train=False, hp=mixed_hp, mutable=["batch_stats"])
    return out, updated.get("batch_stats", {})

  def noise_key(state, step, purpose: int):
    return keys.draw_key(state.noise_key, step, purpose) if spec.noisy else None

  def draw_noise(params, batch_stats, x, noise_key):
    """The noise a train-mode pass on x draws from noise_key (None: none), to
    hand to passes that must all see one draw: a training step and the probes
    of its update, or a probe's every gradient and product, which would
    otherwise compile and run the draw's random-number code each time. The
    draw depends on x's shape only, so XLA drops the pass's arithmetic."""
    if noise_key is None:
      return None
    _, drawn = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                           hp=hp, rngs={"noise": noise_key}, mutable=["batch_stats", "noise"])
    return drawn["noise"]

  def random_like(draw, key, like, fill=0.0):
    """draw(key, like); in a padded program, the draw the model's own network
    makes, padded with zeros (and `fill` where it lacks a layer of `like`), so
    that it probes along the same vectors as alone and never along padding."""
    if not spec.variants:
      return draw(key, like)
    options = [padding.pad_tree(draw(key, padding.common_part(shapes, like)), like, fill,
                                spec.flatten_blocks)
               for shapes in spec.variant_param_shapes]
    return padding.select_variant(options, variant_index(hp))

  masks = None
  if spec.variants:
    units = jnp.asarray(spec.variant_units)[variant_index(hp)]
    masks = tuple(jnp.arange(n) < units[i] for i, n in enumerate(spec.layer_units))
  return ModelFns(apply, loss, adapted, noise_key, draw_noise, random_like, masks)


def stack_layers(per_layer, units: int):
  """Stacks per-layer (units_i, ...) arrays into (layer, units, ...), NaN-padded
  where a layer has fewer units than the widest one."""
  pad = lambda a: jnp.pad(a, [(0, units - a.shape[0])] + [(0, 0)] * (a.ndim - 1),
                          constant_values=jnp.nan)
  return jnp.stack([pad(a) for a in per_layer])


def tap_moments(taps, units: int):
  """Batch moments of each layer's pre-norm activation and nonlinearity input, (layer, unit)."""
  out = {}
  for name, which in (("preact", 0), ("nonlin_input", 1)):
    moments = [batch_moments(tap[which]) for tap in taps]
    out[f"{name}_mean"] = stack_layers([m for m, _ in moments], units)
    out[f"{name}_var"] = stack_layers([v for _, v in moments], units)
  return out
