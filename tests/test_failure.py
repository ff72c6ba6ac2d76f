"""Failure to train: the binomial and mean-predictor rules against hand
computations, a tiny study whose models at a huge learning rate sit at chance,
a tiny regression study, and the summary and report that count them."""

import math

import numpy as np
import pytest
import xarray as xr

from conftest import tiny_config
from icsjax import analysis
from icsjax import data as data_lib
from icsjax import failure
from icsjax import runner
from icsjax import store
from icsjax import summary
from icsjax.report import trainability


def binomial_tail(k: int, n: int, p: float) -> float:
  """P(X >= k), X ~ Binomial(n, p), summed term by term."""
  return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k, n + 1))


def smallest_trained(n: int, classes: int) -> int:
  """The fewest correct answers out of n whose tail probability is below 0.05."""
  return next(k for k in range(n + 1) if binomial_tail(k, n, 1 / classes) < 0.05)


def classification(n: int, classes: int) -> failure.Baseline:
  return failure.Baseline("classification", n, classes, float("nan"))


@pytest.mark.parametrize("n, classes", [(300, 10), (352, 10), (64, 3)])
def test_the_binomial_rule_matches_a_hand_computation(n, classes):
  k = smallest_trained(n, classes)
  # Accuracies as the records hold them: float32 means over the test examples.
  acc = np.array([k / n, (k - 1) / n, 1.0, 0.0], np.float32)
  got = failure.verdict(np.zeros(4, np.int32), {failure.ACCURACY: acc},
                        classification(n, classes))
  want_p = [binomial_tail(j, n, 1 / classes) for j in (k, k - 1, n, 0)]
  np.testing.assert_allclose(got["chance_p_value"], want_p, rtol=1e-9)
  assert got["failed"].tolist() == [False, True, False, True]
  assert got["failure"].tolist() == ["", "chance", "", "chance"]
  assert np.isnan(got["mse_ratio"]).all()


def test_diverged_wins_and_no_evaluation_is_not_failure():
  base = classification(300, 10)
  got = failure.verdict(np.array([0, 7]), {failure.ACCURACY: np.array([0.9, np.nan])}, base)
  assert got["failed"].tolist() == [False, True]
  assert got["failure"].tolist() == ["", "diverged"]
  assert np.isnan(got["chance_p_value"][1])
  before = failure.verdict(np.array([0, 3]), None, base)
  assert before["failed"].tolist() == [False, True]
  assert before["failure"].tolist() == ["", "diverged"]
  assert np.isnan(before["chance_p_value"]).all()


def test_the_mean_predictor_rule_matches_a_hand_computation():
  train_y = np.array([[0.0, 2.0], [2.0, 4.0]])  # mean (1, 3)
  test_y = np.array([[1.0, 3.0], [3.0, 3.0], [1.0, 0.0]])  # squared errors 0, 4, 9
  mse = failure.mean_predictor_mse(train_y, test_y)
  assert mse == pytest.approx(13 / 3, rel=1e-15)
  base = failure.Baseline("regression", 3, 2, mse)
  loss = np.array([0.5, 0.94, 0.96, 1.2, np.nan]) * mse
  got = failure.verdict(np.array([0, 0, 0, 0, 4]), {failure.MSE: loss}, base)
  np.testing.assert_allclose(got["mse_ratio"][:4], [0.5, 0.94, 0.96, 1.2], rtol=1e-12)
  assert got["failed"].tolist() == [False, False, True, True, True]
  assert got["failure"].tolist() == ["", "", "no better than the mean",
                                     "no better than the mean", "diverged"]
  assert np.isnan(got["chance_p_value"]).all()


@pytest.fixture(scope="module")
def chance_study(tmp_path_factory):
  """No norm at lr 0.4 learns the digits a little in 40 steps; at lr 1000 its sigmoid
  units saturate and it sits at chance with a finite loss. Two segments."""
  c = tiny_config()
  c.sweep.norm = ("none",)
  c.sweep.lr = (0.4, 1e3)
  workdir = tmp_path_factory.mktemp("chance")
  runner.run(c, workdir, progress=False, log=lambda *_: None)
  return workdir


def test_a_model_at_chance_has_failed_and_a_trained_one_has_not(chance_study):
  ds = analysis.load(chance_study)
  n = int(ds.attrs["test_examples_evaluated"])
  assert ds.attrs["chance_accuracy"] == 0.1
  acc = ds.test_accuracy_eval_mode.isel(eval_step=-1).values
  correct = [round(float(a) * n) for a in acc]
  np.testing.assert_allclose(ds.chance_p_value.values,
                             [binomial_tail(k, n, 0.1) for k in correct], rtol=1e-9)
  assert (ds.diverged_step == 0).all()
  assert np.isfinite(ds.test_loss_eval_mode).all()  # a finite loss, yet failed
  assert ds.failed.values.tolist() == [False, False, True, True]
  assert ds.failure.values.tolist() == ["", "", "chance", "chance"]
  assert ds.lr.values.tolist() == [0.4, 0.4, 1e3, 1e3]
  assert np.isnan(ds.mse_ratio).all()


def test_each_segment_holds_the_verdict_at_its_end(chance_study):
  """A run stopped after the first segment reports the verdict of step 20."""
  (group,) = store.load(chance_study)
  arrays, schema = store.load_arrays(chance_study, group)
  base = classification(schema["attrs"]["test_examples_evaluated"], 10)
  with np.load(store.segment_paths(chance_study, group)[0]) as first:
    assert first["eval_step"].tolist() == [0, 20]  # step 0: the initial state
    at_20 = failure.verdict(first["diverged_step"],
                            {failure.ACCURACY: first["test_accuracy_eval_mode"][:, -1]}, base)
    for name in ("failed", "failure", "chance_p_value"):
      np.testing.assert_array_equal(first[name], at_20[name], err_msg=name)
  assert arrays["failure"].dtype == np.dtype(failure.REASON_DTYPE)


def test_the_summary_and_report_count_failures(chance_study):
  table = (chance_study / "summary.txt").read_text().splitlines()
  header = table[0].split()
  assert header[:6] == ["variant", "lr", "seeds", "diverged", "failed", "train"]
  trained, at_chance = table[2].split(), table[3].split()
  assert trained[:5] == ["none", "0.4", "2", "0", "0"] and "±" in trained
  assert at_chance[:5] == ["none", "1000.0", "2", "0", "2"]
  assert set(at_chance[5:]) == {"failed"}
  text = trainability.learning_rates_text(analysis.load(chance_study))
  assert ("`none`: every seed trained at lr = 0.4; at lr = 1000: 2/2 failed "
          "(diverged: 0, at chance: 2).") in text
  assert "does not reach the largest usable rate" not in text


def test_the_report_says_when_no_model_failed(chance_study):
  ds = analysis.load(chance_study)
  ds["failed"].values[:] = False
  ds["failure"].values[:] = ""
  text = trainability.learning_rates_text(ds)
  assert "`none`: every seed trained at every lr (0.4, 1000)." in text
  assert "No model failed to train up to lr = 1000, so this sweep does not reach" in text


def _model_axis(values, lrs):
  return xr.Dataset(
      {k: (("model",) + ("eval_step",) * (np.ndim(v) - 1), np.asarray(v))
       for k, v in values.items()},
      coords={"variant": ("model", ["none"] * len(lrs)), "lr": ("model", lrs),
              "seed": ("model", [0, 1] * (len(lrs) // 2))})


def test_the_summary_never_averages_a_failed_model():
  """Per lr: both trained; one failed with a huge finite loss; both failed; both diverged."""
  loss = [[0.5], [0.7], [0.3], [1.8e31], [2.3], [2.4], [np.nan], [np.nan]]
  ds = _model_axis({"test_loss_eval_mode": loss,
                    "failed": [0, 0, 0, 1, 1, 1, 1, 1],
                    "diverged_step": [0, 0, 0, 0, 0, 0, 3, 5]},
                   [0.1, 0.1, 1.0, 1.0, 10.0, 10.0, 100.0, 100.0])
  rows = summary.rows({"g": ds}, 10)
  assert [(r["diverged"], r["failed"], r["every_seed"]) for r in rows] == [
      (0, 0, ""), (0, 1, ""), (0, 2, "failed"), (2, 2, "diverged")]
  assert rows[1]["test loss (eval)"] == (0.3, 0.0)
  lines = summary.format_table(rows).splitlines()
  assert lines[2].split()[-3:] == ["0.6000", "±", "0.1000"]
  assert lines[3].split()[-3:] == ["0.3000", "±", "0.0000"]
  assert lines[4].split()[-1] == "failed" and lines[5].split()[-1] == "diverged"
  assert not any(s in "".join(lines) for s in ("inf", "nan", "e+"))


def test_a_regression_study_judges_against_the_mean_predictor(tmp_path):
  """A linear net at lr 0.05 fits y = A x within 20 steps; at lr 1e-6 it stays at its
  random start, worse than predicting the training targets' mean."""
  c = tiny_config(dataset="gaussian_regression", regression_dim=4, regression_train_size=64,
                  regression_test_size=40, activation="identity", steps=20, eval_every=20)
  c.sweep.norm = ("none",)
  c.sweep.lr = (0.05, 1e-6)
  runner.run(c, tmp_path, progress=False, log=lambda *_: None)
  ds = analysis.load(tmp_path)
  n = int(ds.attrs["test_examples_evaluated"])
  assert n == 32  # two test batches of 16 out of 40 examples
  raw = data_lib.load(dict(c.to_dict(), norm="none"))
  train_y, test_y = np.asarray(raw.train_y, np.float64), np.asarray(raw.test_y, np.float64)
  mean = [sum(train_y[i, o] for i in range(len(train_y))) / len(train_y) for o in range(4)]
  hand = sum(sum((test_y[i, o] - mean[o]) ** 2 for o in range(4)) for i in range(n)) / n
  assert ds.attrs["mean_predictor_test_mse"] == pytest.approx(hand, rel=1e-12)
  mse = ds.test_loss_eval_mode.isel(eval_step=-1).values
  np.testing.assert_allclose(ds.mse_ratio.values, mse / hand, rtol=1e-6)
  assert ds.failure.values.tolist() == ["", "", "no better than the mean",
                                        "no better than the mean"]
  assert np.isnan(ds.chance_p_value).all()
  text = trainability.learning_rates_text(ds)
  assert "at lr = 1e-06: 2/2 failed (diverged: 0, no better than the mean: 2)" in text
