"""Effects: paired contrasts of a metric between labels, with seed-level intervals.

A contrast pairs models whose labels agree on everything but one level
(variant, or depth) and share the seed index, takes one difference per seed
(a log-ratio for ratio metrics), and gives a t interval for every combination
of the remaining labels (a "cell", e.g. one per learning rate): nothing is
pooled across learning rates or other swept values.

In a partial study (a run that stopped early; icsjax.steps_reached) every
effect reads its models over the steps all of the models it compares
reached: a time average over those steps, a final value at the last of them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import xarray as xr

from icsjax import failure
from icsjax import steps_reached
from icsjax.number_text import number
from icsjax.report import stats
from icsjax.report.metrics import Metric

SEED = "seed"
VARIANT = "variant"
BASELINE = "none"  # every other variant is compared with the model without a norm
NOISY_PREFIX = "noisy_"  # noisy_X is compared with X (Santurkar et al. sec. 2)


def label_levels(ds: xr.Dataset) -> list[str]:
  return list(ds.indexes["model"].names)


def cell_levels(ds: xr.Dataset, *also: str) -> list[str]:
  """The labels an effect is computed separately for: all but seed, variant, `also`."""
  return [k for k in label_levels(ds) if k not in (SEED, VARIANT) + also]


def level_values(ds: xr.Dataset, level: str) -> list:
  """A label's distinct values, in the order of the model axis."""
  return list(dict.fromkeys(ds[level].values.tolist()))


def variants(ds: xr.Dataset) -> list[str]:
  return level_values(ds, VARIANT)


def baseline_contrasts(ds: xr.Dataset) -> list[tuple[str, str]]:
  """(variant, "none") for every other variant; none without a baseline."""
  vs = variants(ds)
  return [(v, BASELINE) for v in vs if v != BASELINE] if BASELINE in vs else []


def noisy_contrasts(ds: xr.Dataset) -> list[tuple[str, str]]:
  vs = variants(ds)
  return [(v, v[len(NOISY_PREFIX):]) for v in vs
          if v.startswith(NOISY_PREFIX) and v[len(NOISY_PREFIX):] in vs]


def cells(ds: xr.Dataset, *drop: str) -> list[tuple[tuple[str, object], ...]]:
  """Every combination of the non-seed, non-variant labels present, in model order."""
  levels = cell_levels(ds, *drop)
  keys = zip(*(ds[k].values.tolist() for k in levels)) if levels else [()]
  return [tuple(zip(levels, key)) for key in dict.fromkeys(keys)]


def select(ds: xr.Dataset, variant: str | None, cell) -> xr.Dataset:
  """The models of one variant (None: any) and cell, by label, seeds along `model`."""
  mask = np.ones(ds.sizes["model"], bool)
  if variant is not None:
    mask &= ds[VARIANT].values == variant
  for k, v in cell:
    mask &= ds[k].values == v
  return ds.isel(model=np.flatnonzero(mask))


def _labelled(ds: xr.Dataset, labels: dict) -> np.ndarray:
  """Mask of the models whose labels equal `labels` ({level: value or values})."""
  mask = np.ones(ds.sizes["model"], bool)
  for k, v in labels.items():
    mask &= np.isin(ds[k].values, v if isinstance(v, (list, tuple)) else [v])
  return mask


def common_steps(ds: xr.Dataset, **labels) -> xr.Dataset:
  """`ds` over the steps every model labelled `labels` reached (all of `ds` unless
  the study is partial)."""
  return steps_reached.on_common_steps(ds, _labelled(ds, labels))


def per_model(metric: Metric, ds: xr.Dataset) -> pd.Series:
  """The metric of every model, indexed by the model labels."""
  da = metric.compute(ds)
  extra = [d for d in da.dims if d != "model"]
  assert not extra, f"{metric.key} left dims {extra}"
  return da.to_series()


def paired(values: pd.Series, level: str, a, b, log: bool) -> pd.Series:
  """One difference per seed and cell: value at level=a minus value at level=b
  (log-ratio when `log`), the other labels equal. NaN where a side is missing."""
  wide = values.unstack(level)
  if log:
    diff = stats.log_ratio(wide[a].to_numpy(), wide[b].to_numpy())
  else:
    diff = wide[a].to_numpy(dtype=float) - wide[b].to_numpy(dtype=float)
  return pd.Series(diff, index=wide.index)


@dataclasses.dataclass(frozen=True)
class Effect:
  metric: Metric
  contrast: str  # e.g. "batchnorm vs none"
  cell: tuple[tuple[str, object], ...]  # e.g. (("lr", 0.1),)
  interval: stats.Interval  # on the log scale when scale == "ratio"
  scale: str  # "ratio" (shown as exp of the interval) or "difference"
  seeds: int  # seed indices paired, before pairs with a missing value are dropped
  # The smallest difference the measurement can resolve (one test example, for an
  # accuracy); 0 when any difference is meaningful.
  resolution: float = 0.0
  # A question's primary effect carries its Holm-adjusted p-value (report.primary);
  # every other effect is exploratory and read from its unadjusted interval.
  adjusted_p: float = math.nan
  primary: bool = False

  @property
  def below_resolution(self) -> bool:
    return (self.scale == "difference" and self.resolution > 0
            and math.isfinite(self.interval.mean) and abs(self.interval.mean) < self.resolution)

  @property
  def verdict(self) -> str:
    if self.interval.n < 2:
      return "too few seeds"
    if self.below_resolution:
      return "below resolution"
    if self.primary:
      if not self.adjusted_p < stats.ALPHA:
        return "inconclusive"
    return {-1: "lower", 1: "higher", 0: "inconclusive"}[self.interval.sign]

  @property
  def role(self) -> str:
    if not self.primary:
      return "exploratory"
    return f"primary (Holm p = {self.adjusted_p:.2g})" if math.isfinite(self.adjusted_p) \
        else "primary"

  def shown(self) -> tuple[float, float, float]:
    """(estimate, low, high) on the scale a reader reads: a ratio or a difference."""
    iv = self.interval
    with np.errstate(over="ignore"):  # a ratio beyond 1e308 reads inf, not an error
      f = np.exp if self.scale == "ratio" else float
      return tuple(float(f(x)) if math.isfinite(x) else math.nan
                   for x in (iv.mean, iv.low, iv.high))

  def text(self) -> str:
    """'×1.9 [1.2, 3.1]', '+0.012 [-0.004, +0.028]'; extreme values in scientific
    notation (icsjax.number_text), "n/a" without an estimate."""
    est, low, high = self.shown()
    if math.isnan(est):
      return "n/a"
    fmt = self.metric.fmt
    sign = "" if self.scale == "ratio" else "+"
    num = ("×" if self.scale == "ratio" else "") + number(est, sign + fmt)
    ci = f"[{number(low, sign + fmt)}, {number(high, sign + fmt)}]"
    return num if math.isnan(low) else f"{num} {ci}"

  def cell_text(self) -> str:
    return cell_text(self.cell)


def with_resolution(ds: xr.Dataset, effects) -> list[Effect]:
  """Effects on an accuracy get the test set's resolution: one example of those evaluated."""
  n = ds.attrs.get("test_examples_evaluated", 0)
  if not n:
    return list(effects)
  return [dataclasses.replace(e, resolution=1.0 / n) if e.metric.per_example else e
          for e in effects]


def value_text(v) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)


def cell_text(cell) -> str:
  return ", ".join(f"{k}={value_text(v)}" for k, v in cell) or "all models"


def effects(differences: pd.Series, metric: Metric, contrast: str, scale: str) -> list[Effect]:
  """One Effect per cell of per-seed `differences` (index: seed and cell levels)."""
  cells = [k for k in differences.index.names if k != SEED]
  if not cells:
    groups = [((), differences)]
  else:
    groups = [(tuple(zip(cells, key if isinstance(key, tuple) else (key,))), part)
              for key, part in differences.groupby(level=cells, sort=True)]
  return [Effect(metric, contrast, cell, stats.t_interval(part.to_numpy()), scale,
                 len(part)) for cell, part in groups]


def compare(ds: xr.Dataset, metric: Metric, a: str, b: str,
            level: str = VARIANT) -> list[Effect]:
  """Metric at level=a versus level=b, paired over seeds, one Effect per cell."""
  log = metric.scale == "ratio"
  ds = common_steps(ds, **{level: [a, b]})
  diff = paired(per_model(metric, ds), level, a, b, log)
  if level == VARIANT:
    return effects(diff, metric, f"{a} vs {b}", metric.scale)
  # Along another label (depth), each variant is its own contrast, never pooled.
  return [e for v in variants(ds) for e in
          effects(diff.xs(v, level=VARIANT), metric, f"{v}: {level} {a} vs {b}", metric.scale)]


def _rows(values: pd.Series, labels: dict) -> pd.Series:
  """The values whose labels equal `labels`, those levels dropped from the index."""
  mask = np.ones(len(values), bool)
  for k, v in labels.items():
    mask &= values.index.get_level_values(k) == v
  return values[mask].droplevel(list(labels))


def compare_across(ds: xr.Dataset, metric: Metric, a: dict, b: dict) -> list[Effect]:
  """Models labelled `a` against models labelled `b` (e.g. batch norm at the default
  initialisation against no norm at another), paired by seed index and the labels
  neither names, one Effect per cell of those labels."""
  ds = steps_reached.on_common_steps(ds, _labelled(ds, a) | _labelled(ds, b))
  values = per_model(metric, ds)
  left, right = _rows(values, a), _rows(values, b)
  both = left.index.intersection(right.index)
  left, right = left.reindex(both), right.reindex(both)
  if metric.scale == "ratio":
    diff = stats.log_ratio(left.to_numpy(), right.to_numpy())
  else:
    diff = left.to_numpy(dtype=float) - right.to_numpy(dtype=float)
  name = lambda labels: ", ".join(f"{k}={value_text(v)}" for k, v in labels.items())
  return effects(pd.Series(diff, index=both), metric, f"{name(a)} vs {name(b)}", metric.scale)


def within(ds: xr.Dataset, metric: Metric, variant: str) -> list[Effect]:
  """A metric that is itself a difference within each model (one sample per seed)."""
  values = per_model(metric, common_steps(ds, **{VARIANT: variant}))
  part = values.xs(variant, level=VARIANT)
  return effects(part, metric, variant, "difference")


def depth_interaction(ds: xr.Dataset, metric: Metric, a: str, b: str, deep, shallow,
                      level: str = "depth") -> list[Effect]:
  """How a variant contrast changes with depth: per seed, the a-vs-b contrast at
  the deepest models minus that at the shallowest (a ratio of ratios for ratio
  metrics)."""
  log = metric.scale == "ratio"
  ds = common_steps(ds, **{VARIANT: [a, b], level: [deep, shallow]})
  per_depth = paired(per_model(metric, ds), VARIANT, a, b, log)
  diff = paired(per_depth, level, deep, shallow, log=False)
  return effects(diff, metric, f"({a} vs {b}) at {level} {deep} vs {shallow}", metric.scale)


def per_variant_summary(ds: xr.Dataset, metric: Metric) -> pd.DataFrame:
  """Mean, t interval and seed count of a metric per variant and cell (not paired; read
  over the steps every model reached, as the variants are set side by side)."""
  values = per_model(metric, steps_reached.on_common_steps(ds))
  keys = [VARIANT] + cell_levels(ds)
  rows = []
  for key, part in values.groupby(level=keys, sort=False):
    key = key if isinstance(key, tuple) else (key,)
    iv = stats.t_interval(part.to_numpy())
    rows.append(dict(zip(keys, key), mean=iv.mean, low=iv.low, high=iv.high, n=iv.n,
                     seeds=len(part)))
  return pd.DataFrame(rows)


def diverged(ds: xr.Dataset) -> int:
  """How many of the models diverged."""
  return int((ds.diverged_step.values > 0).sum()) if "diverged_step" in ds else 0


def failed(ds: xr.Dataset) -> int:
  """How many of the models failed to train (icsjax.failure), the diverged included."""
  return int(failure.failed_models(ds).sum())


def failed_for(ds: xr.Dataset, reason: str) -> int:
  """How many of the models failed for `reason` (icsjax.failure.REASONS)."""
  if reason == failure.DIVERGED:
    return diverged(ds)
  return int((ds.failure.values == reason).sum()) if "failure" in ds else 0


REASON_WORDS = {failure.DIVERGED: "diverged", failure.CHANCE: "at chance",
                failure.MEAN: "no better than the mean"}


def failure_reasons(ds: xr.Dataset) -> list[str]:
  """The reasons a model of this study can fail for: divergence, and chance for a
  classification task or the mean predictor for a regression task."""
  classification = "test_accuracy_eval_mode" in ds
  return [failure.DIVERGED] + [r for r, possible in (
      (failure.CHANCE, classification),
      (failure.MEAN, not classification or failed_for(ds, failure.MEAN) > 0)) if possible]


def failures_text(ds: xr.Dataset, reasons) -> str:
  """'2/2 failed (diverged: 1, at chance: 1)'."""
  detail = ", ".join(f"{REASON_WORDS[r]}: {failed_for(ds, r)}" for r in reasons)
  return f"{failed(ds)}/{ds.sizes['model']} failed ({detail})"
