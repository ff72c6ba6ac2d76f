"""The norm kinds and their layers (docs/measurements.md: "Noisy batch norm",
"ℓp batch norm", "Running and population statistics").

Batch norms reduce over every axis but the last (the unit or channel axis);
layer norm over every axis but the first (the example axis).
Train mode normalises with the statistics of the batch and updates running
statistics; eval mode uses the running statistics, or, when hp carries
adaptation weights, a mix of them with the batch's (BN adaptation,
docs/measurements.md, "Test time"). Running statistics are an EMA with decay
``hp["bn_momentum"]`` (Flax convention) of the batch mean and of the unbiased
batch variance (lp kinds: of the batch lp scale).

Per-model hyperparameters (``hp``) arrive as traced scalars, so a vmapped
group can sweep them without recompiling.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NORM_KINDS = ("none", "batchnorm", "noisy_batchnorm", "layernorm",
              "l1_batchnorm", "l2_batchnorm", "linf_batchnorm")
BATCH_NORM_KINDS = tuple(k for k in NORM_KINDS if k.endswith("batchnorm"))
LP_ORDER = {"l1_batchnorm": 1.0, "l2_batchnorm": 2.0, "linf_batchnorm": math.inf}
NOISY_NORMS = ("noisy_batchnorm",)  # the kinds that draw from the "noise" rng in train mode
# Eval mode with these keys in hp adapts the statistics to the batch (icsjax.inference).
ADAPT_MEAN_WEIGHT, ADAPT_SCALE_WEIGHT = "adapt_mean_weight", "adapt_scale_weight"
# A padded program's per-model index of its logical group (icsjax.programs), in hp.
PROGRAM_VARIANT = "program_variant"
RUNNING_STAT_NAMES = {"batchnorm": ("mean", "var"), "noisy_batchnorm": ("mean", "var"),
                      **{k: ("mean", "lp_scale") for k in LP_ORDER}}


def variant_index(hp):
  """The model's variant (logical group) within its padded program."""
  return jnp.asarray(hp[PROGRAM_VARIANT]).astype(jnp.int32)


def stand_in(x):
  """Values for a padded program's padding units to normalise instead of their
  constant 0, whose scale (sqrt of 0) would have an infinite derivative: +1 and
  -1 on alternate examples, so that every batch statistic stays finite."""
  sign = 1.0 - 2.0 * (jnp.arange(x.shape[0]) % 2).astype(x.dtype)
  return jnp.broadcast_to(sign.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)


def variant_noise(key, shape, hp, dtype, variant_units):
  """Noisy BN's (s, m) in a padded program: drawn at the model's own number of
  units (the same numbers as its network alone draws), 0 on padding units."""
  distinct = sorted(set(variant_units))
  pad = lambda a: jnp.pad(a, [(0, 0)] * (len(shape) - 1) + [(0, shape[-1] - a.shape[-1])])
  draws = [santurkar_noise(key, tuple(shape[:-1]) + (u,), hp, dtype) for u in distinct]
  which = jnp.asarray([distinct.index(u) for u in variant_units])[variant_index(hp)]
  return tuple(jnp.stack([pad(d[i]) for d in draws])[which] for i in range(2))


def lp_scale(centred, axes, p):
  """Average lp norm over `axes`: (mean |c|^p)^(1/p); for p = inf, max |c|."""
  if math.isinf(p):
    return jnp.max(jnp.abs(centred), axis=axes)
  if p == 1.0:
    return jnp.mean(jnp.abs(centred), axis=axes)
  if p == 2.0:
    return jnp.sqrt(jnp.mean(jnp.square(centred), axis=axes))
  return jnp.mean(jnp.abs(centred) ** p, axis=axes) ** (1.0 / p)


def batch_moments(x, p=None, centre: bool = True):
  """Per-unit (mean, scale) over every axis but the last (the unit or channel
  axis): the scale is the biased variance of x (p None), or the average lp norm
  of x minus its mean (of x itself when centre is False)."""
  mean, _, scale = centred_moments(x, p, centre)
  return mean, scale


def centred_moments(x, p=None, centre: bool = True):
  """batch_moments with the values it measured the scale of: (mean, x - mean or
  x, scale). A norm divides those very values, so that its gradient reaches x
  through one subtraction."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  centred = x - mean if centre else x
  scale = jnp.mean(jnp.square(centred), axis=axes) if p is None else lp_scale(centred, axes, p)
  return mean, centred, scale


def unbiased(variance, x):
  """A biased per-unit variance of x times m / (m - 1), m the elements per unit."""
  count = math.prod(x.shape[:-1])
  return variance * (count / (count - 1))


def santurkar_noise(key, shape, hp, dtype):
  """Noisy BN's (s, m) with a <- s * a + m (Santurkar et al. 2018, sec. 2).

  Per layer and step: mu ~ U(-r, r), sigma ~ U(low, high); per sample and
  unit: m ~ U(mu - d, mu + d), s ~ N(sigma, std^2).

  All from one uniform draw on (-1, 1), the normals by the inverse error
  function as jax.random.normal makes them: every random call compiles into
  its own generator, and one call per layer compiles in under half the time
  of a split and four draws.
  """
  n = math.prod(shape)
  low = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
  u = jax.random.uniform(key, (2 + 2 * n,), dtype, low, 1.0)
  mu = hp["noise_mean_range"] * u[0]
  sigma = hp["noise_scale_low"] + (u[1] + 1.0) / 2.0 * (
      hp["noise_scale_high"] - hp["noise_scale_low"])
  m = mu + hp["noise_mean_spread"] * u[2:2 + n].reshape(shape)
  normal = np.sqrt(2.0).astype(dtype) * jax.scipy.special.erfinv(u[2 + n:])
  s = sigma + hp["noise_scale_std"] * normal.reshape(shape)
  return s, m


class Norm(nn.Module):
  """One of NORM_KINDS; `none` is the identity."""
  kind: str
  eps: float = 1e-5
  lp_center: bool = True
  # A padded program: this layer's real units per variant (icsjax.programs).
  variant_units: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, x, *, train: bool, hp, mask=None):
    """`mask` (units,): a padded program's real units; the others are normalised
    as stand-ins and take no part in any statistic of the real ones."""
    if self.kind == "none":
      return x
    features = x.shape[-1]
    gamma = self.param("scale", nn.initializers.ones, (features,), x.dtype)
    beta = self.param("bias", nn.initializers.zeros, (features,), x.dtype)
    if self.kind == "layernorm":
      return self._layer_normalise(x, mask) * gamma + beta
    if mask is not None:
      x = jnp.where(mask, x, stand_in(x))
    y = self._batch_normalise(x, train, hp) * gamma + beta
    if self.kind in NOISY_NORMS and train:
      noise = self._noise(x, hp)
      if noise is not None:
        y = noise[0] * y + noise[1]
    return y

  def _noise(self, x, hp):
    """Noisy BN's (s, m): given in the "noise" collection (a draw made before,
    icsjax.forward's draw_noise), else drawn from the "noise" rng (and kept in
    that collection when it is mutable). Neither: train-mode evaluation, no noise."""
    if self.has_variable("noise", "scale"):
      return self.get_variable("noise", "scale"), self.get_variable("noise", "shift")
    if not self.has_rng("noise"):
      return None
    if self.variant_units:
      s, m = variant_noise(self.make_rng("noise"), x.shape, hp, x.dtype, self.variant_units)
    else:
      s, m = santurkar_noise(self.make_rng("noise"), x.shape, hp, x.dtype)
    if self.is_mutable_collection("noise"):
      self.put_variable("noise", "scale", s)
      self.put_variable("noise", "shift", m)
    return s, m

  def _layer_normalise(self, x, mask):
    """Per example over every unit of the layer (a conv layer: height x width x
    channels); in a padded program over its real units only."""
    axes = tuple(range(1, x.ndim))
    if mask is None:
      mean = jnp.mean(x, axis=axes, keepdims=True)
      var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
      return (x - mean) * jax.lax.rsqrt(var + self.eps)
    # An absent layer has no real unit: count 1 keeps its (unused) values finite.
    count = jnp.maximum(jnp.sum(mask), 1) * math.prod(x.shape[1:-1])
    mean = jnp.sum(jnp.where(mask, x, 0.0), axis=axes, keepdims=True) / count
    centred = jnp.where(mask, x - mean, 0.0)
    var = jnp.sum(jnp.square(centred), axis=axes, keepdims=True) / count
    return centred * jax.lax.rsqrt(var + self.eps)

  def _batch_normalise(self, x, train, hp):
    mean_name, scale_name = RUNNING_STAT_NAMES[self.kind]
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", mean_name, jnp.zeros, (features,), x.dtype)
    ra_scale = self.variable("batch_stats", scale_name, jnp.ones, (features,), x.dtype)
    p = LP_ORDER.get(self.kind)
    centre = p is None or self.lp_center
    if train:
      # The biased variance normalises, as in Ioffe Alg. 1; the EMA tracks the unbiased one.
      mean, centred, scale = centred_moments(x, p, centre)
      running_target = unbiased(scale, x) if p is None else scale
      if not self.is_initializing():
        mom = hp["bn_momentum"]
        ra_mean.value = mom * ra_mean.value + (1.0 - mom) * mean
        ra_scale.value = mom * ra_scale.value + (1.0 - mom) * running_target
    else:
      mean, scale = ra_mean.value, ra_scale.value
      if ADAPT_MEAN_WEIGHT in hp:
        mean, scale = self._adapted_statistics(x, p, centre, hp, mean, scale)
        if self.is_mutable_collection("batch_stats"):  # to normalise other inputs with
          ra_mean.value, ra_scale.value = mean, scale
      centred = x - mean if centre else x
    if p is None:
      return centred * jax.lax.rsqrt(scale + self.eps)
    return centred / (scale + self.eps)

  @staticmethod
  def _adapted_statistics(x, p, centre, hp, source_mean, source_scale):
    """BN adaptation (Schneider et al. 2020): the source (running) statistics mixed
    with this batch's by weights w = n / (N + n) from hp, per statistic, so that
    later layers already see adapted earlier ones. The batch's variance is the
    biased one train mode normalises with (lp kinds: its lp scale), so weights
    of 1 reproduce train mode exactly."""
    batch_mean, batch_scale = batch_moments(x, p, centre)
    w_mean, w_scale = hp[ADAPT_MEAN_WEIGHT], hp[ADAPT_SCALE_WEIGHT]
    return ((1.0 - w_mean) * source_mean + w_mean * batch_mean,
            (1.0 - w_scale) * source_scale + w_scale * batch_scale)
