"""Per-model summary numbers that the report's effects compare.

Each metric reduces a model's records to one number by named dims. Over time
a NaN (a diverged model's later records) makes the number NaN, so that model
drops out of its pairs instead of being averaged over the part before it
diverged; over layers and units NaNs are padding of narrower or shallower
groups and are skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import xarray as xr

from icsjax import records as records_lib

EARLY_FRACTION = 0.1  # "early training": the first tenth of the steps


@dataclasses.dataclass(frozen=True)
class Metric:
  key: str
  label: str
  definition: str
  # "ratio": compared as log(a/b), shown as a/b; "difference": shown as a - b.
  scale: str
  needs: tuple[str, ...]
  compute: Callable[[xr.Dataset], xr.DataArray]
  fmt: str = ".3g"
  cadence: str = ""  # the config field of the probe that records it ("": always)

  def available(self, ds: xr.Dataset) -> bool:
    return all(v in ds for v in self.needs)


def _early_train_loss(ds):
  early = ds.step <= ds.step.max() * EARLY_FRACTION
  return ds.train_loss.sel(step=early).mean("step", skipna=False)


def _final(var):
  return lambda ds: ds[var].sel(eval_step=ds.eval_step.max())


def _median_drift(ds):
  median = ds.monitor_percentiles.sel(quantile=0.5, method="nearest")
  first = median.sel(record_step=0)  # at initialisation
  last = median.sel(record_step=ds.record_step.max())
  return abs(last - first).mean(["layer", "tracked_unit"])


def _grad_ics(ds):
  # The first weight layer's G' is G by definition (nothing before it moves):
  # including it would dilute every variant towards zero alike.
  first = ds.weight_layer.values[0]
  rel = ds.ics_grad_diff_relative.drop_sel(weight_layer=first)
  return rel.mean("weight_layer").mean("ics_step", skipna=False)


def _grad_predictiveness(ds):
  return ds.landscape_grad_diff.mean(["landscape_step", "lr_multiple"], skipna=False)


def _probe_mean(key, label, definition, var, probe) -> Metric:
  """A probe's per-event scalar, averaged over its events during training (a
  ratio metric): a kind that also probes step 0 leaves that one out, which
  reads the initialisation, not the variant's training."""
  kind = records_lib.BY_NAME[probe]
  during = lambda ds: ds[var].sel({kind.axis: ds[kind.axis] > 0})
  return Metric(key, label, f"{definition}, averaged over {probe} probes after step 0",
                "ratio", (var,), lambda ds: during(ds).mean(kind.axis, skipna=False),
                cadence=kind.cadence)


def _test_mode_gap(ds):
  last = ds.eval_step.max()
  return (ds.test_accuracy_eval_mode.sel(eval_step=last)
          - ds.test_accuracy_train_mode.sel(eval_step=last))


EARLY_LOSS = Metric(
    "early_loss", "early training loss",
    f"mean minibatch training loss over the first {EARLY_FRACTION:.0%} of the steps",
    "ratio", ("train_loss",), _early_train_loss)
FINAL_ACCURACY = Metric(
    "final_accuracy", "final test accuracy",
    "test-set accuracy (fraction correct) at the last evaluation, eval mode (running "
    "statistics)", "difference", ("test_accuracy_eval_mode",),
    _final("test_accuracy_eval_mode"), ".3f")
MEDIAN_DRIFT = Metric(
    "median_drift", "drift of the median nonlinearity input",
    "|median at the last record − median at initialisation (step 0)| of a tracked unit's "
    "nonlinearity input over the fixed monitor set, averaged over layers and tracked "
    "units (units of the nonlinearity's input)", "difference", ("monitor_percentiles",),
    _median_drift, ".3f")
GRAD_ICS = Metric(
    "grad_ics", "gradient-ICS ‖G−G′‖/‖G‖",
    "relative change of a layer's gradient when the layers before it take this step's "
    "update (Santurkar et al. Def. 2.1), averaged over probe steps and over the weight "
    "layers after the first", "ratio", ("ics_grad_diff_relative",), _grad_ics,
    cadence=records_lib.BY_NAME["ics"].cadence)
GRAD_PREDICTIVENESS = Metric(
    "grad_predictiveness", "gradient change along the update",
    "‖∇L(θ) − ∇L(θ − ηd)‖ averaged over probe steps and step sizes η "
    "(lower: the gradient predicts the gradient a step away better)", "ratio",
    ("landscape_grad_diff",), _grad_predictiveness,
    cadence=records_lib.BY_NAME["landscape"].cadence)
BETA_SMOOTHNESS = _probe_mean(
    "beta_smoothness", "effective β-smoothness", "max over η of ‖∇L(θ) − ∇L(θ − ηd)‖ / ‖ηd‖",
    "landscape_beta_smoothness", "landscape")
LOSS_VARIATION = _probe_mean(
    "loss_variation", "loss variation along the update",
    "max − min of the loss over the step sizes η along the update",
    "landscape_loss_variation", "landscape")
LAMBDA_MAX = _probe_mean(
    "lambda_max", "Hessian λ_max",
    "largest Hessian eigenvalue on the fixed probe batch (Lanczos)", "hessian_lambda_max",
    "curvature")
TEST_MODE_GAP = Metric(
    "test_mode_gap", "test accuracy, running minus batch statistics",
    "at the last evaluation: accuracy with running (EMA) statistics minus accuracy with "
    "each test batch normalised by its own statistics (training batch size)", "difference",
    ("test_accuracy_eval_mode", "test_accuracy_train_mode"), _test_mode_gap, ".3f")
