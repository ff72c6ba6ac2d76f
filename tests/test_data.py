"""Datasets: sizes, splits, standardisation."""

import numpy as np

from conftest import tiny_config
from icsjax import data as data_lib


def static_of(config):
  return {k: config[k] for k in config if k != "sweep"}


def test_standardisation_leaves_constant_features_at_zero():
  raw = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 2.0], [5.0, 5.0, 4.0]], np.float32)
  mean, inv_std = data_lib.standardisation(raw)
  x = (raw - mean) * inv_std
  assert np.all(np.isfinite(x))
  np.testing.assert_array_equal(x[:, 1], 0.0)
  np.testing.assert_allclose(x[:, [0, 2]].mean(0), 0.0, atol=1e-6)
  np.testing.assert_allclose(x[:, [0, 2]].std(0), 1.0, rtol=1e-6)


def test_digits_split_and_standardisation():
  static = static_of(tiny_config())
  ds = data_lib.load(static)
  n_train, n_test = data_lib.split_sizes(static)
  assert (ds.num_train, ds.num_test) == (n_train, n_test) and n_train + n_test == 1797
  from sklearn.datasets import load_digits
  x, _ = load_digits(return_X_y=True)
  constant = x.std(0) == 0  # pixels blank in every digit
  assert constant.any()
  assert ds.input_shape == (8, 8, 1)  # images; an MLP flattens them
  tr = np.asarray(ds.train_x).reshape(-1, 64)
  assert np.all(np.isfinite(tr))
  np.testing.assert_array_equal(tr[:, constant], 0.0)
  varying = tr.std(0) > 0
  np.testing.assert_allclose(tr[:, varying].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(tr[:, varying].std(0), 1.0, rtol=1e-4)
  # raw inputs are kept and standardise to the training arrays
  np.testing.assert_allclose(np.asarray(ds.standardise(ds.raw_test_x)), np.asarray(ds.test_x),
                             atol=1e-6)
  np.testing.assert_array_equal(np.asarray(ds.monitor_x).reshape(-1, 64),
                                tr[:static["monitor_size"]])
  # train and test are disjoint pieces of one fixed shuffle of the 1797 images
  rows = {tuple(r) for r in np.asarray(ds.raw_train_x).reshape(-1, 64)}
  assert sum(tuple(r) in rows for r in np.asarray(ds.raw_test_x).reshape(-1, 64)) < 10  # digits has a few duplicates


def test_the_shipped_digits_are_scikit_learns():
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  static = static_of(tiny_config())
  ds = data_lib.load(static)
  # data_seed's shuffle of scikit-learn's order, split into train and test
  order = np.random.default_rng(static["data_seed"]).permutation(len(x))
  raw = np.concatenate([np.asarray(ds.raw_train_x), np.asarray(ds.raw_test_x)]).reshape(-1, 64)
  labels = np.concatenate([np.asarray(ds.train_y), np.asarray(ds.test_y)])
  np.testing.assert_array_equal(raw, x[order])
  np.testing.assert_array_equal(labels, y[order])


def test_gaussian_regression_targets_follow_a_fixed_matrix():
  static = static_of(tiny_config(dataset="gaussian_regression", regression_train_size=100,
                                 regression_test_size=50))
  ds = data_lib.load(static)
  a = data_lib.gaussian_regression_matrix(static["regression_dim"], static["data_seed"])
  raw = np.asarray(ds.raw_train_x, np.float64)
  np.testing.assert_allclose(np.asarray(ds.train_y), raw @ a.T, rtol=1e-5, atol=1e-5)
  assert ds.task == data_lib.REGRESSION and ds.num_outputs == static["regression_dim"]
  assert (ds.num_train, ds.num_test) == (100, 50)
  again = data_lib.load(static)
  np.testing.assert_array_equal(np.asarray(again.train_x), np.asarray(ds.train_x))
