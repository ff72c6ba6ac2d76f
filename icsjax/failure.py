"""Failure to train: one verdict per model, made on the host from records already
written, so a resumed run reaches the same verdict as an uninterrupted one.

A model has failed when it diverged, or when its last test evaluation (eval
mode) does no better than a predictor that never looks at the input: for
classification, its accuracy is not significantly above chance (one-sided
binomial test); for regression, its test MSE is at least MSE_RATIO_LIMIT times
that of predicting the training targets' mean. docs/measurements.md, "Failure
to train", gives the definitions and why.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.special

from icsjax.data import REGRESSION
from icsjax.records import evaluation

# The reasons a model failed, as stored in `failure` ("" : it trained).
TRAINED = ""
DIVERGED = "diverged"
CHANCE = "chance"
MEAN = "no better than the mean"
REASONS = (DIVERGED, CHANCE, MEAN)
# One fixed width, so every segment writes the same dtype whatever its verdicts.
REASON_DTYPE = f"<U{max(len(r) for r in REASONS)}"

SIGNIFICANCE = 0.05   # a trained classifier beats chance at p < SIGNIFICANCE
MSE_RATIO_LIMIT = 0.95  # a trained regressor's test MSE is below this x the mean predictor's

# What verdict() adds to a segment's per-model records, each of dims (model,).
VARIABLES = ("failed", "failure", "chance_p_value", "mse_ratio")
ACCURACY = "test_accuracy_eval_mode"
MSE = "test_loss_eval_mode"


@dataclasses.dataclass(frozen=True)
class Baseline:
  """What a group's final evaluation is judged against."""
  task: str
  examples: int          # test examples each evaluation covers
  num_classes: int       # classification: chance accuracy is 1 / num_classes
  mean_predictor_mse: float  # regression: test MSE of the training targets' mean; else NaN

  def attrs(self) -> dict:
    """The baseline as dataset attributes (the schema's), so a reader can recompute."""
    if self.task == REGRESSION:
      return {"mean_predictor_test_mse": self.mean_predictor_mse}
    return {"chance_accuracy": 1.0 / self.num_classes}


def mean_predictor_mse(train_y, test_y) -> float:
  """Test MSE of predicting every example's targets by the training targets' mean,
  summed over outputs and averaged over examples like the task loss (float64)."""
  mean = np.mean(np.asarray(train_y, np.float64), axis=0)
  return float(np.mean(np.sum(np.square(np.asarray(test_y, np.float64) - mean), axis=-1)))


def baseline(data, task: str, num_classes: int, examples: int) -> Baseline:
  """The baseline of a dataset whose evaluations cover its first `examples` test examples."""
  mse = (mean_predictor_mse(data.train_y, np.asarray(data.test_y)[:examples])
         if task == REGRESSION else float("nan"))
  return Baseline(task, examples, num_classes, mse)


def chance_p_value(accuracy, examples: int, num_classes: int) -> np.ndarray:
  """P(X >= k) for X ~ Binomial(examples, 1/num_classes), k = round(accuracy x examples)
  the correct answers: the one-sided p-value of "no better than chance". NaN where
  the accuracy is NaN."""
  acc = np.asarray(accuracy, np.float64)
  k = np.round(np.where(np.isnan(acc), 0.0, acc) * examples)
  # bdtrc(j, n, p) = P(X > j), and 1 for j < 0 (no correct answers: certainly no better)
  p = scipy.special.bdtrc(k - 1, examples, 1.0 / num_classes)
  return np.where(np.isnan(acc), np.nan, p)


def last_evaluation(records: dict) -> dict | None:
  """{variable: (models,)} of a segment's last test evaluation; None without one."""
  ev = records.get(evaluation.KIND.name)
  if not ev or np.shape(ev[MSE])[1] == 0:
    return None
  return {name: np.asarray(v)[:, -1] for name, v in ev.items()}


def verdict(diverged_step, last_eval: dict | None, base: Baseline) -> dict:
  """{failed (models,) bool, failure (models,) reason, chance_p_value, mse_ratio}.

  A statistic that is NaN (a diverged model's NaN evaluation) never shows a model
  trained. Without any evaluation yet a model that has not diverged is not failed
  and both statistics are NaN; the statistic of the other task is NaN throughout.
  """
  diverged = np.asarray(diverged_step) > 0
  nan = np.full(diverged.shape, np.nan)
  p_value, ratio, not_better = nan, nan, np.zeros(diverged.shape, bool)
  if last_eval is not None and base.task == REGRESSION:
    ratio = np.asarray(last_eval[MSE], np.float64) / base.mean_predictor_mse
    not_better = ~(ratio < MSE_RATIO_LIMIT)
  elif last_eval is not None:
    p_value = chance_p_value(last_eval[ACCURACY], base.examples, base.num_classes)
    not_better = ~(p_value < SIGNIFICANCE)
  reason = np.where(diverged, DIVERGED,
                    np.where(not_better, MEAN if base.task == REGRESSION else CHANCE, TRAINED))
  return dict(zip(VARIABLES, (diverged | not_better, reason.astype(REASON_DTYPE), p_value,
                             ratio)))


def failed_models(ds) -> np.ndarray:
  """(models,) bool: which models of a loaded dataset failed, the diverged included; a
  workdir written before the verdict existed knows only divergence."""
  if "failed" in ds:
    return np.asarray(ds["failed"].values == 1)
  if "diverged_step" in ds:
    return np.asarray(ds["diverged_step"].values > 0)
  return np.zeros(ds.sizes["model"], bool)
