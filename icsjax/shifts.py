"""Shifted test inputs (docs/measurements.md, "Test time"), computed on the
device from raw inputs, once per run.

Every corruption maps raw inputs (before standardisation) to raw inputs of the
same shape; the caller standardises the result with the training statistics,
exactly as clean inputs are. Image corruptions act on pixels scaled to [0, 1]
(digits are 0..16, TFDS images already [0, 1]) and clip back to that range, as
Hendrycks & Dietterich's CIFAR-10-C does; their strength at severity 1..5 is
CIFAR-10-C's (``SEVERITY_PARAMS``). The mean and scale shifts act on any input,
per feature, in units of the training standard deviation.

Randomness (Gaussian noise) comes from one key per study (``shift_key``), the
same for every model and every evaluation, so shifted results are paired across
models and over training; severities share one normal draw, scaled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icsjax import tfds_data

IMAGE_CORRUPTIONS = ("gaussian_noise", "brightness", "contrast", "blur")
FEATURE_SHIFTS = ("mean_shift", "scale_shift")
CORRUPTIONS = IMAGE_CORRUPTIONS + FEATURE_SHIFTS
SEVERITIES = (1, 2, 3, 4, 5)
# Per severity 1..5. Image ones: CIFAR-10-C (Hendrycks & Dietterich 2019) on [0, 1]
# pixels: noise std, brightness added (to every channel, not HSV value), contrast
# factor about each image's per-channel mean, Gaussian blur std in pixels.
# mean_shift: added, in training standard deviations; scale_shift: factor on the
# deviation from the training mean.
SEVERITY_PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "mean_shift": (0.25, 0.5, 1.0, 1.5, 2.0),
    "scale_shift": (1.25, 1.5, 2.0, 2.5, 3.0),
}
CLEAN = "clean"  # the unshifted test set: always the first of the shifted sets
TFDS_PREFIX = "tfds_"  # corruption names of TFDS corrupted test sets (CIFAR-10-C)
PIXEL_RANGE = {"digits": 16.0, **{name: 1.0 for name in tfds_data.TFDS_DATASETS}}
BLUR_TRUNCATE = 4.0  # kernel radius int(4 sigma + 0.5), as scipy.ndimage.gaussian_filter
SHIFT_KEY_PURPOSE = 1_000_003  # folded into the base seed; far from any seed index


def shift_key(base_seed: int, draw: int = 0):
  """The study's shift noise key; draw 0: test inputs, 1: the separate adaptation set."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(base_seed),
                                               SHIFT_KEY_PURPOSE), draw)


def gaussian_kernel(sigma: float):
  """Normalised 1-D Gaussian weights over radius int(truncate * sigma + 0.5)."""
  radius = int(BLUR_TRUNCATE * sigma + 0.5)
  taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1, dtype=jnp.float32) / sigma) ** 2)
  return taps / jnp.sum(taps), radius


def blur(images, sigma: float):
  """Separable Gaussian blur over height and width of (n, h, w, c) images, edges
  mirrored (scipy's 'reflect': d c b a | a b c d)."""
  kernel, radius = gaussian_kernel(sigma)
  for axis in (1, 2):
    pad = [(0, 0)] * images.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(images, pad, mode="symmetric")
    size = images.shape[axis]
    images = sum(kernel[k] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
                 for k in range(2 * radius + 1))
  return images


def _image_corruption(name: str, unit, param, noise):
  """One image corruption of [0, 1] pixels `unit` (n, h, w, c), then clipped."""
  if name == "gaussian_noise":
    out = unit + param * noise
  elif name == "brightness":
    out = unit + param
  elif name == "contrast":
    mean = jnp.mean(unit, axis=(1, 2), keepdims=True)
    out = (unit - mean) * param + mean
  else:
    out = blur(unit, param)
  return jnp.clip(out, 0.0, 1.0)


def corrupt(raw_x, name: str, severity: int, *, dataset: str, feature_mean, feature_inv_std,
            key):
  """raw_x (n, ...) shifted by corruption `name` at `severity` (1..5), still raw."""
  param = SEVERITY_PARAMS[name][severity - 1]
  if name in FEATURE_SHIFTS:
    # Constant features (inverse std 0) have no scale to shift by: they stay put.
    std = jnp.where(feature_inv_std > 0, 1.0 / jnp.where(feature_inv_std > 0,
                                                         feature_inv_std, 1.0), 0.0)
    if name == "mean_shift":
      return raw_x + param * std
    return feature_mean + param * (raw_x - feature_mean)
  top = PIXEL_RANGE[dataset]
  noise = jax.random.normal(key, raw_x.shape, raw_x.dtype) if name == "gaussian_noise" else None
  return top * _image_corruption(name, raw_x / top, param, noise)


def needs_images(names) -> tuple[str, ...]:
  """The corruptions of `names` that only images have."""
  return tuple(n for n in names if n in IMAGE_CORRUPTIONS)


def shifted_sets(run, data, raw_x, draw: int):
  """(1 + corruptions x severities, n, ...) standardised inputs: clean first, then
  each corruption at each severity, severity varying fastest."""
  key = shift_key(run.base_seed, draw)
  sets = [data.standardise(raw_x)]
  for c, name in enumerate(run.shift_corruptions):
    for severity in run.shift_severities:
      sets.append(data.standardise(corrupt(
          raw_x, name, severity, dataset=data.name, feature_mean=data.feature_mean,
          feature_inv_std=data.feature_inv_std, key=jax.random.fold_in(key, c))))
  return jnp.stack(sets)


def with_shifted_sets(data, run, static: dict):
  """`data` with its shifted test sets, computed once on the device (they depend
  on neither model nor step, and compiling them into every group's segment cost
  more than the rest of the shift evaluation); then the TFDS corrupted test sets
  (``tfds_corruptions``), read from disk and standardised alike. For
  adapt_set='separate', the synthetic shifts of the first max(adapt_sizes)
  training examples too (a TFDS corrupted set has no training split: its
  separate adaptation set is the clean one)."""
  if not (run.test_time_every and run.adapt_sizes):
    return data
  test = jax.jit(lambda d: shifted_sets(run, d, d.raw_test_x, draw=0))(data)
  labels = [jnp.broadcast_to(data.test_y, (test.shape[0],) + data.test_y.shape)]
  loaded = [tfds_data.load_corrupted_test(data.name, name, severity,
                                          static["tfds_data_dir"] or None)
            for name in run.tfds_corruptions for severity in run.shift_severities]
  for x, y in loaded:
    if x.shape != tuple(data.raw_test_x.shape):
      raise ValueError(f"a {data.name} corrupted test set holds {x.shape} images where the "
                       f"test set holds {tuple(data.raw_test_x.shape)}")
  if loaded:
    test = jnp.concatenate([test, data.standardise(jnp.stack([x for x, _ in loaded]))])
    labels.append(jnp.stack([y for _, y in loaded]))
  adapt = None
  if run.adapt_set == "separate":
    adapt = jax.jit(lambda d: shifted_sets(run, d, d.raw_train_x[:max(run.adapt_sizes)],
                                           draw=1))(data)
    adapt = jnp.concatenate([adapt] + [adapt[:1]] * len(loaded))
  return data.replace(shifted_test_x=test, shifted_test_y=jnp.concatenate(labels),
                      shifted_adapt_x=adapt)


def corruption_coords(run) -> list[str]:
  """The corruption axis: clean, each synthetic shift, each TFDS corrupted set (tfds_*)."""
  return [CLEAN, *run.shift_corruptions, *(TFDS_PREFIX + n for n in run.tfds_corruptions)]
