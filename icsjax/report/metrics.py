"""Per-model summary numbers that the report's effects compare.

Each metric reduces a model's records to one number by named dims. Over time
a NaN (a diverged model's later records) makes the number NaN, so that model
drops out of its pairs instead of being averaged over the part before it
diverged; over layers and units NaNs are padding of narrower or shallower
groups and are skipped.

Most metrics average a record over its time axis (``SeriesMean``): such a
metric knows its per-model series, so the same quantity can be read over part
of training (a ``Window``; icsjax.report.phases) or step by step.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Callable

import xarray as xr

from icsjax import records as records_lib

EARLY_FRACTION = 0.1  # "early training": the first tenth of the steps


def last_step(ds: xr.Dataset, time: str) -> xr.DataArray:
  """T, the last training step: that of the per-step records, else of `time`'s axis."""
  axis = records_lib.PER_STEP_AXIS if records_lib.PER_STEP_AXIS in ds.coords else time
  return ds[axis].max()


@dataclasses.dataclass(frozen=True)
class Window:
  """The steps t with after·T < t ≤ through·T, T the last training step (None: no
  bound on that side)."""
  after: float | None = None
  through: float | None = None

  def mask(self, t: xr.DataArray, last: xr.DataArray) -> xr.DataArray:
    bounds = ([t > last * self.after] if self.after is not None else []) + (
        [t <= last * self.through] if self.through is not None else [])
    return functools.reduce(operator.and_, bounds) if bounds else xr.ones_like(t, dtype=bool)


@dataclasses.dataclass(frozen=True)
class SeriesMean:
  """A metric's computation when it is a record averaged over its time axis.

  `series(ds)` has dims (model, time, *rest): the record per model and step,
  before any average over time (rest: dims averaged jointly with time, e.g. η).
  The metric's value is its mean over the steps of `window` (None: all) and the
  rest, NaN-propagating."""
  series: Callable[[xr.Dataset], xr.DataArray]
  time: str
  window: Window | None = None

  def _in_window(self, ds: xr.Dataset, t: xr.DataArray) -> xr.DataArray:
    """The window over `t`, the series' own steps (it may leave some of the axis out,
    e.g. step 0)."""
    return self.window.mask(t, last_step(ds, self.time))

  def steps(self, ds: xr.Dataset) -> xr.DataArray:
    """The steps of the series inside the window."""
    t = self.series(ds)[self.time]
    return t if self.window is None else t.sel({self.time: self._in_window(ds, t)})

  def per_step(self, ds: xr.Dataset) -> xr.DataArray:
    """(model, time): the series at every step of its axis (window ignored), averaged
    over the other dims."""
    s = self.series(ds)
    rest = [d for d in s.dims if d not in ("model", self.time)]
    return s.mean(rest, skipna=False) if rest else s

  def __call__(self, ds: xr.Dataset) -> xr.DataArray:
    s = self.series(ds)
    if self.window is not None:
      s = s.sel({self.time: self._in_window(ds, s[self.time])})
    return s.mean([d for d in s.dims if d != "model"], skipna=False)


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
  per_example: bool = False  # a fraction of test examples: resolved to one example
  # What is averaged over time, where the label or definition name a window of it
  # ("" : the label and the definition): "training loss" for early training loss.
  quantity: str = ""
  quantity_definition: str = ""

  @property
  def over_time(self) -> SeriesMean | None:
    """How the metric averages a record over time; None for any other metric."""
    return self.compute if isinstance(self.compute, SeriesMean) else None

  def available(self, ds: xr.Dataset) -> bool:
    """Its records are there and, for a windowed time average, the window holds a step."""
    if not all(v in ds for v in self.needs):
      return False
    sm = self.over_time
    return sm is None or sm.window is None or sm.steps(ds).size > 0


def _series_metric(key, label, definition, scale, var, series, time, **kw) -> Metric:
  return Metric(key, label, definition, scale, (var,), SeriesMean(series, time), **kw)


def _final(var):
  return lambda ds: ds[var].sel(eval_step=ds.eval_step.max())


def _median_drift(ds):
  median = ds.monitor_percentiles.sel(quantile=0.5, method="nearest")
  first = median.sel(record_step=0)  # at initialisation
  last = median.sel(record_step=ds.record_step.max())
  return abs(last - first).mean(["layer", "tracked_unit"])


def _grad_ics_per_step(ds):
  # The first weight layer's G' is G by definition (nothing before it moves):
  # including it would dilute every variant towards zero alike.
  first = ds.weight_layer.values[0]
  rel = ds.ics_grad_diff_relative.drop_sel(weight_layer=first)
  return rel.mean("weight_layer")


def _probe_mean(key, label, definition, var, probe) -> Metric:
  """A probe's per-event scalar, averaged over its events during training (a
  ratio metric): a kind that also probes step 0 leaves that one out, which
  reads the initialisation, not the variant's training."""
  kind = records_lib.BY_NAME[probe]
  # Step 0 (the initialisation, for kinds that record it) is not part of training.
  during = lambda ds: ds[var].sel({kind.axis: ds[kind.axis] > 0})
  return _series_metric(key, label, f"{definition}, averaged over {probe} probes after step 0",
                        "ratio", var, during, kind.axis, cadence=kind.cadence)


def _test_mode_gap(ds):
  last = ds.eval_step.max()
  return (ds.test_accuracy_eval_mode.sel(eval_step=last)
          - ds.test_accuracy_train_mode.sel(eval_step=last))


EARLY_LOSS = Metric(
    "early_loss", "early training loss",
    f"mean minibatch training loss over the first {EARLY_FRACTION:.0%} of the steps",
    "ratio", ("train_loss",),
    SeriesMean(lambda ds: ds.train_loss, records_lib.PER_STEP_AXIS,
               Window(through=EARLY_FRACTION)),
    quantity="training loss", quantity_definition="mean minibatch training loss")
FINAL_ACCURACY = Metric(
    "final_accuracy", "final test accuracy",
    "test-set accuracy (fraction correct) at the last evaluation, eval mode (running "
    "statistics)", "difference", ("test_accuracy_eval_mode",),
    _final("test_accuracy_eval_mode"), ".3f", per_example=True)
MEDIAN_DRIFT = Metric(
    "median_drift", "drift of the median nonlinearity input",
    "|median at the last record − median at initialisation (step 0)| of a tracked unit's "
    "nonlinearity input over the fixed monitor set, averaged over layers and tracked "
    "units (units of the nonlinearity's input)", "difference", ("monitor_percentiles",),
    _median_drift, ".3f")
GRAD_ICS = _series_metric(
    "grad_ics", "gradient-ICS ‖G−G′‖/‖G‖",
    "relative change of a layer's gradient when the layers before it take this step's "
    "update (Santurkar et al. Def. 2.1), averaged over probe steps and over the weight "
    "layers after the first", "ratio", "ics_grad_diff_relative", _grad_ics_per_step,
    records_lib.BY_NAME["ics"].axis, cadence=records_lib.BY_NAME["ics"].cadence)
GRAD_PREDICTIVENESS = _series_metric(
    "grad_predictiveness", "gradient change along the update",
    "‖∇L(θ) − ∇L(θ − ηd)‖ averaged over probe steps and step sizes η "
    "(lower: the gradient predicts the gradient a step away better)", "ratio",
    "landscape_grad_diff", lambda ds: ds.landscape_grad_diff,
    records_lib.BY_NAME["landscape"].axis, cadence=records_lib.BY_NAME["landscape"].cadence)
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
    ("test_accuracy_eval_mode", "test_accuracy_train_mode"), _test_mode_gap, ".3f",
    per_example=True)


def _hidden_layers(var):
  """Mean over the hidden weight layers, every one but the output layer (which no norm
  follows, so it is never scale-invariant), at the probes after step 0."""
  axis = records_lib.BY_NAME["curvature"].axis
  return lambda ds: ds[var].sel({axis: ds[axis] > 0}).isel(
      weight_layer=slice(0, -1)).mean("weight_layer")


CURVATURE = records_lib.BY_NAME["curvature"]
LANDSCAPE = records_lib.BY_NAME["landscape"]
SCALED_SHARPNESS = _series_metric(
    "scaled_sharpness", "scale-aware sharpness ‖W‖²·λ_max(H_WW)",
    "per hidden weight layer, the squared norm of its kernel times the largest eigenvalue "
    "of that kernel's own Hessian block (unchanged when a kernel followed by batch norm is "
    "rescaled), averaged over hidden layers and curvature probes after step 0", "ratio",
    "layer_sharpness_scaled", _hidden_layers("layer_sharpness_scaled"), CURVATURE.axis,
    cadence=CURVATURE.cadence)
LAYER_LAMBDA_MAX = _series_metric(
    "layer_lambda_max", "per-layer λ_max(H_WW), raw",
    "largest eigenvalue of a hidden kernel's own Hessian block, averaged over hidden layers "
    "and curvature probes after step 0 (changes as 1/c² when a kernel followed by batch "
    "norm is scaled by c)", "ratio", "layer_lambda_max", _hidden_layers("layer_lambda_max"), CURVATURE.axis,
    cadence=CURVATURE.cadence)
GRAD_PREDICTIVENESS_RELATIVE = _series_metric(
    "grad_predictiveness_relative", "relative gradient change along the update",
    "‖∇L(θ) − ∇L(θ − ηd)‖ / ‖∇L(θ)‖, averaged over probe steps and step sizes η", "ratio",
    "landscape_grad_diff_relative", lambda ds: ds.landscape_grad_diff_relative,
    LANDSCAPE.axis, cadence=LANDSCAPE.cadence)
LOSS_VARIATION_RELATIVE = _probe_mean(
    "loss_variation_relative", "relative loss variation along the update",
    "(max − min of the loss over the step sizes η) / the loss at θ",
    "landscape_loss_variation_relative", "landscape")
# Every metric above that averages a record over time, in the report's order.
OVER_TIME = (EARLY_LOSS, GRAD_ICS, GRAD_PREDICTIVENESS, BETA_SMOOTHNESS, LOSS_VARIATION,
             LAMBDA_MAX, SCALED_SHARPNESS, LAYER_LAMBDA_MAX, GRAD_PREDICTIVENESS_RELATIVE,
             LOSS_VARIATION_RELATIVE)
