"""Datasets as arrays placed on the device once.

Raw inputs are kept beside the standardised ones so that later input
corruptions can act on raw values and be standardised the same way.
Standardisation uses the training split's mean and standard deviation: per
feature for vectors and the digits' pixels, per channel for TFDS images; a
constant feature maps to zero instead of dividing by zero. Images keep their
(height, width, channels) shape; an MLP flattens them.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from icsjax import tfds_data

# The 8x8 handwritten digits (UCI ML "Optical Recognition of Handwritten Digits",
# Alpaydin & Kaynak 1998, CC BY 4.0): the 1,797 images, pixel values 0..16, and
# labels of the copy scikit-learn bundles as load_digits, in its order, shipped
# here as uint8 arrays (45 kB) so that a run imports no scikit-learn (a second).
DIGITS_FILE = "digits.npz"
DIGITS_SIZE = 1797  # images, 10 classes
CLASSIFICATION = "classification"
REGRESSION = "regression"
DATASETS = ("digits", "gaussian_regression") + tfds_data.TFDS_DATASETS
IMAGE_DATASETS = ("digits",) + tfds_data.TFDS_DATASETS


@struct.dataclass
class Dataset:
  train_x: jax.Array        # standardised, (n_train, features) or (n_train, h, w, c)
  train_y: jax.Array        # int labels (classification) or targets (regression)
  test_x: jax.Array
  test_y: jax.Array
  monitor_x: jax.Array      # fixed training examples for percentile records
  raw_train_x: jax.Array    # before standardisation
  raw_test_x: jax.Array
  feature_mean: jax.Array
  feature_inv_std: jax.Array  # 0 for constant features; broadcasts against one example
  name: str = struct.field(pytree_node=False)
  task: str = struct.field(pytree_node=False)
  num_outputs: int = struct.field(pytree_node=False)
  # Shifted test inputs, standardised (icsjax.shifts.with_shifted_sets); None when off.
  shifted_test_x: Any = None   # (shifted sets, n_test, ...): clean, synthetic, then TFDS ones
  shifted_test_y: Any = None   # (shifted sets, n_test): their labels
  shifted_adapt_x: Any = None  # the synthetic shifts of the first training examples

  @property
  def num_train(self) -> int:
    return self.train_x.shape[0]

  @property
  def num_test(self) -> int:
    return self.test_x.shape[0]

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train_x.shape[1:])

  def standardise(self, raw_x):
    return (raw_x - self.feature_mean) * self.feature_inv_std


def split_sizes(static: dict) -> tuple[int, int]:
  """(n_train, n_test) of a dataset config, without loading any data."""
  if static["dataset"] == "digits":
    n_test = int(round(DIGITS_SIZE * static["test_fraction"]))
    return DIGITS_SIZE - n_test, n_test
  if static["dataset"] in tfds_data.TFDS_DATASETS:
    return tfds_data.SPLIT_SIZES[static["dataset"]]
  return static["regression_train_size"], static["regression_test_size"]


def input_shape_and_outputs(static: dict) -> tuple[tuple[int, ...], int]:
  """(one example's shape, number of outputs) of a dataset config, without loading it."""
  if static["dataset"] == "digits":
    return (8, 8, 1), 10
  if static["dataset"] in tfds_data.TFDS_DATASETS:
    return tfds_data.IMAGE_SHAPES[static["dataset"]], tfds_data.NUM_CLASSES[static["dataset"]]
  return (static["regression_dim"],), static["regression_dim"]


def task_of(static: dict) -> str:
  """classification or regression, from the dataset's name alone."""
  return REGRESSION if static["dataset"] == "gaussian_regression" else CLASSIFICATION


def standardisation(raw_train_x: np.ndarray, axes=(0,)):
  """Mean and inverse standard deviation over `axes` (0 where constant)."""
  mean = raw_train_x.mean(axis=axes)
  std = raw_train_x.std(axis=axes)
  inv_std = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 0.0)
  return mean.astype(np.float32), inv_std.astype(np.float32)


def _digits(static):
  with importlib.resources.files("icsjax").joinpath(DIGITS_FILE).open("rb") as f:
    stored = np.load(f)
    x, y = stored["images"], stored["labels"]
  assert len(x) == DIGITS_SIZE, len(x)
  order = np.random.default_rng(static["data_seed"]).permutation(len(x))
  n_train, _ = split_sizes(static)
  x, y = x[order].astype(np.float32).reshape(-1, 8, 8, 1), y[order].astype(np.int32)
  return (x[:n_train], y[:n_train], x[n_train:], y[n_train:]), CLASSIFICATION, 10, (0,)


def gaussian_regression_matrix(dim: int, data_seed: int) -> np.ndarray:
  """The fixed random A of y = A x (Santurkar et al. 2018's DLN task)."""
  rng = np.random.default_rng([data_seed, 1])
  return (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)


def _gaussian_regression(static):
  dim = static["regression_dim"]
  a = gaussian_regression_matrix(dim, static["data_seed"])
  rng = np.random.default_rng([static["data_seed"], 2])
  n_train, n_test = split_sizes(static)
  x = rng.standard_normal((n_train + n_test, dim)).astype(np.float32)
  y = x @ a.T
  return (x[:n_train], y[:n_train], x[n_train:], y[n_train:]), REGRESSION, dim, (0,)


def _tfds(static):
  name = static["dataset"]
  arrays = tfds_data.load_arrays(name, static["tfds_data_dir"] or None)
  return arrays, CLASSIFICATION, tfds_data.NUM_CLASSES[name], (0, 1, 2)  # per channel


_LOADERS = {"digits": _digits, "gaussian_regression": _gaussian_regression,
            **{name: _tfds for name in tfds_data.TFDS_DATASETS}}


def load(static: dict[str, Any]) -> Dataset:
  """Loads the dataset named by a group's static config onto the default device."""
  (raw_tr, y_tr, raw_te, y_te), task, num_outputs, axes = _LOADERS[static["dataset"]](static)
  mean, inv_std = standardisation(raw_tr, axes)
  tr = (raw_tr - mean) * inv_std
  te = (raw_te - mean) * inv_std
  arrays = dict(train_x=tr, train_y=y_tr, test_x=te, test_y=y_te,
                monitor_x=tr[:static["monitor_size"]], raw_train_x=raw_tr,
                raw_test_x=raw_te, feature_mean=mean, feature_inv_std=inv_std)
  arrays = {k: jnp.asarray(v) for k, v in arrays.items()}
  return Dataset(**arrays, name=static["dataset"], task=task, num_outputs=num_outputs)


DATA_FIELDS = ("dataset", "data_seed", "test_fraction", "regression_dim",
               "regression_train_size", "regression_test_size", "monitor_size",
               "tfds_data_dir")


def data_key(static: dict) -> tuple:
  """Groups with equal data fields share one loaded Dataset."""
  return tuple(static[k] for k in DATA_FIELDS)
