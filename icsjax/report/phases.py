"""Effects over part of training, and at matched training loss.

One number per model can hide a change of sign (a variant's β-smoothness lower
than the baseline's early in training and higher late), and a measure read at
the same step compares models at different stages of training (one far lower
in loss than the other). Three views keep these apart
(docs/measurements.md, "How the report estimates effects"):

- phases: a time-averaged metric restricted to the early phase (t ≤ T/4) or
  the late phase (t > T/2), T the last training step;
- matched training loss: per seed, each model's probe series read at the first
  step its smoothed training loss reaches a level, at levels every model of the
  pair passes through while it is probed;
- agreement: whether the verdicts of the views agree, have opposite signs, or
  are partly inconclusive.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np
import xarray as xr

from icsjax import records as records_lib
from icsjax.report import effects as fx
from icsjax.report import metrics
from icsjax.report import stats
from icsjax.report.metrics import Metric, Window, last_step

# Phases as fractions of T, the last training step. A probe exactly at T/4 is early;
# one exactly at T/2 is in neither phase (the middle quarter separates them).
PHASES = {"early": Window(through=0.25), "late": Window(after=0.5)}
PHASE_RANGE = {"early": "steps t ≤ T/4", "late": "steps t > T/2"}

SMOOTH_STEPS = 50  # centred moving average of the per-step training loss
LEVELS = 5  # matched-loss levels per pair of variants and cell
LOSS_LEVEL = "training loss"  # the matched level's name in an effect's cell


# --- phases

def _phase_window(phase: str) -> Window:
  if phase not in PHASES:
    raise ValueError(f"phase {phase!r}: allowed are {', '.join(map(repr, PHASES))}")
  return PHASES[phase]


def phase_text(phase: str, ds: xr.Dataset | None = None) -> str:
  """'early phase (steps t ≤ T/4 = 2500)'; without `ds`, no number."""
  w = _phase_window(phase)
  text = f"{phase} phase ({PHASE_RANGE[phase]}"
  if ds is not None and records_lib.PER_STEP_AXIS in ds.coords:
    text += f" = {float(last_step(ds, records_lib.PER_STEP_AXIS) * (w.through or w.after)):g}"
  return text + ")"


def in_phase(metric: Metric, phase: str, ds: xr.Dataset | None = None) -> Metric:
  """The metric over the steps of one phase ("early" or "late") only, its window
  replacing any the metric has (early training loss becomes the training loss of the
  phase). `ds` puts the phase's step bound into the label. A phase that holds no
  probe step gives a metric that is not `available` (see `unavailable_reason`)."""
  over_time = metric.over_time
  if over_time is None:
    raise ValueError(f"{metric.key} is not a time average; phases apply to "
                     f"{', '.join(m.key for m in metrics.OVER_TIME)}")
  when = phase_text(phase, ds)
  return dataclasses.replace(
      metric, key=f"{metric.key}_{phase}", label=f"{metric.quantity or metric.label}, {when}",
      definition=(f"{metric.quantity_definition or metric.definition}, over the {when} "
                  f"only, T the last training step"),
      compute=dataclasses.replace(over_time, window=_phase_window(phase)),
      quantity=metric.quantity or metric.label,
      quantity_definition=metric.quantity_definition or metric.definition)


def unavailable_reason(metric: Metric, ds: xr.Dataset) -> str | None:
  """Why `metric.available(ds)` is False, in a sentence; None when it is available."""
  missing = [v for v in metric.needs if v not in ds]
  if missing:
    return f"{metric.label} is not measured: {', '.join(missing)} is not in the records."
  if metric.available(ds):
    return None
  over_time = metric.over_time
  probed = ", ".join(f"{t:g}" for t in ds[over_time.time].values)
  return (f"{metric.label} is not measured: no `{over_time.time}` falls in it (recorded at "
          f"steps {probed}, last training step {float(last_step(ds, over_time.time)):g}).")


# --- matched training loss

def moving_average(x: np.ndarray, window: int) -> np.ndarray:
  """Centred mean over `window` steps along the last axis (for an even window, one
  more step after than before), truncated at the ends; NaN wherever the window holds
  a non-finite value (a diverged model's loss stops there)."""
  x = np.asarray(x, dtype=float)
  if window < 1:
    raise ValueError(f"window {window}: must be at least 1 step")
  if window == 1:  # exactly the loss, not a difference of running sums
    return np.where(np.isfinite(x), x, np.nan)
  n = x.shape[-1]
  bad = ~np.isfinite(x)
  pad = [(0, 0)] * (x.ndim - 1) + [(1, 0)]
  total = np.pad(np.cumsum(np.where(bad, 0.0, x), -1), pad)
  nbad = np.pad(np.cumsum(bad, -1), pad)
  i = np.arange(n)
  lo = np.maximum(i - (window - 1) // 2, 0)
  hi = np.minimum(i + window // 2 + 1, n)
  mean = (total[..., hi] - total[..., lo]) / (hi - lo)
  return np.where(nbad[..., hi] - nbad[..., lo] > 0, np.nan, mean)


def smoothed_loss(ds: xr.Dataset, window: int = SMOOTH_STEPS) -> xr.DataArray:
  """(model, step): each model's per-step training loss, moving average over `window`."""
  loss = ds.train_loss.transpose("model", records_lib.PER_STEP_AXIS)
  return loss.copy(data=moving_average(loss.values, window))


def first_reach(steps: np.ndarray, loss: np.ndarray, level: float) -> float:
  """The first step at which `loss` is at or below `level`; NaN if none."""
  hit = np.flatnonzero(loss <= level)
  return float(steps[hit[0]]) if hit.size else math.nan


def interpolate(steps: np.ndarray, values: np.ndarray, at: float) -> float:
  """`values` (given at `steps`) linearly interpolated in step at `at`; NaN outside the
  steps or where a neighbouring value is not finite (never extrapolated)."""
  if not (math.isfinite(at) and steps[0] <= at <= steps[-1]):
    return math.nan
  j = int(np.searchsorted(steps, at, side="left"))
  if steps[j] == at:
    return float(values[j])
  w = (at - steps[j - 1]) / (steps[j] - steps[j - 1])
  return float(values[j - 1] + w * (values[j] - values[j - 1]))


def _probed_span(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
  """First probe step, and the last one with a finite value (NaN, NaN: none)."""
  ok = np.flatnonzero(np.isfinite(values))
  return (float(steps[0]), float(steps[ok[-1]])) if ok.size else (math.nan, math.nan)


def common_levels(loss_steps, losses, probe_steps, probes, n: int = LEVELS) -> np.ndarray:
  """`n` levels spaced evenly in log loss strictly inside [low, high], where high is the
  lowest smoothed loss any model has at its first probe step and low the highest of
  the models' lowest smoothed losses up to their last probed step: the range of losses
  every model passes through while it is probed. Empty when that range is."""
  highs, lows = [], []
  for loss, values in zip(losses, probes):
    first, last = _probed_span(probe_steps, values)
    within = loss[(loss_steps <= last)] if math.isfinite(last) else loss[:0]
    at_first = loss[loss_steps == first]
    if not (np.isfinite(within).any() and at_first.size and np.isfinite(at_first[0])):
      return np.array([])
    highs.append(at_first[0])
    lows.append(np.nanmin(within))
  high, low = min(highs), max(lows)
  if not (math.isfinite(high) and math.isfinite(low) and 0 < low < high):
    return np.array([])
  frac = np.arange(1, n + 1) / (n + 1)
  return np.exp(math.log(high) + frac * (math.log(low) - math.log(high)))


@dataclasses.dataclass(frozen=True)
class MatchedLoss:
  """A contrast a vs b of one metric at matched training loss, in one cell."""
  metric: Metric  # the metric's matched-loss view (key ends in "_matched_loss")
  contrast: str  # "a vs b"
  cell: tuple  # the other labels, as in effects.Effect
  levels: tuple[float, ...]  # the levels kept, highest loss first
  effects: tuple  # effects.Effect per kept level; its cell ends with (LOSS_LEVEL, level)
  # (level, why) for each level left out; (nan, why) when the cell has no level at all
  dropped: tuple[tuple[float, str], ...]
  # (variant, seed, loss_level) over every candidate level, variant (a, b) and paired
  # seed: the step each model first reaches the level, and its probe series there.
  reached_at: xr.DataArray
  values: xr.DataArray
  smooth_steps: int

  def lines(self) -> list[str]:
    """'at training loss 0.832: ×1.9 [1.2, 3.1]' per kept level."""
    return [f"at {LOSS_LEVEL} {level:.3g}: {e.text()}"
            for level, e in zip(self.levels, self.effects)]


def matched_metric(metric: Metric, smooth_steps: int = SMOOTH_STEPS) -> Metric:
  quantity = metric.quantity or metric.label
  return dataclasses.replace(
      metric, key=f"{metric.key}_matched_loss", label=f"{quantity} at matched training loss",
      definition=(f"{quantity} ({metric.quantity_definition or metric.definition}) read at "
                  f"a training loss level instead of averaged over steps: each model's "
                  f"value per probe step, linearly interpolated in step at the first step "
                  f"its training loss ({smooth_steps}-step centred moving average) is at or "
                  f"below the level"),
      quantity=quantity, quantity_definition=metric.quantity_definition or metric.definition)


def _missing_value(seed, variant, reached, first, last) -> str:
  if not math.isfinite(reached):
    return f"seed {seed} ({variant}) never reaches it"
  if math.isfinite(first) and reached < first:
    return f"seed {seed} ({variant}) reaches it at step {reached:g}, before its first probe"
  if math.isfinite(last) and reached > last:
    return (f"seed {seed} ({variant}) reaches it at step {reached:g}, after its last "
            f"probe with a value")
  return f"seed {seed} ({variant}) has no probe value around step {reached:g}"


def _by_seed(part: xr.Dataset, seeds: list) -> np.ndarray:
  """Model indices of `part` in the order of `seeds`."""
  own = part[fx.SEED].values.tolist()
  return np.array([own.index(k) for k in seeds], dtype=int)


def _paired(ds: xr.Dataset, a: str, b: str, cell) -> tuple[dict, list]:
  """{variant: its models in the cell} for a and b, and the seed indices both have."""
  sides = {v: fx.select(ds, v, cell) for v in (a, b)}
  seeds = sorted(set(sides[a][fx.SEED].values.tolist()) & set(sides[b][fx.SEED].values.tolist()))
  return sides, seeds


def _matched_in_cell(ds, metric, a, b, cell, levels, n_levels, smooth_steps) -> MatchedLoss:
  over_time = metric.over_time
  sides, seeds = _paired(ds, a, b, cell)
  loss = np.stack([smoothed_loss(s, smooth_steps).values[_by_seed(s, seeds)]
                   for s in sides.values()])  # variant, seed, step
  probes = np.stack([over_time.per_step(s).transpose("model", over_time.time).values[
      _by_seed(s, seeds)] for s in sides.values()])  # variant, seed, time
  loss_steps = ds[records_lib.PER_STEP_AXIS].values
  probe_steps = ds[over_time.time].values.astype(float)
  if levels is None:
    levels = common_levels(loss_steps, loss.reshape(-1, loss.shape[-1]), probe_steps,
                           probes.reshape(-1, probes.shape[-1]), n_levels) if seeds else []
  levels = np.sort(np.asarray(levels, dtype=float))[::-1]
  reached = np.full((2, len(seeds), levels.size), np.nan)
  values = np.full_like(reached, np.nan)
  for i, j, k in np.ndindex(reached.shape):
    reached[i, j, k] = first_reach(loss_steps, loss[i, j], levels[k])
    values[i, j, k] = interpolate(probe_steps, probes[i, j], reached[i, j, k])
  if metric.scale == "ratio":
    diff = stats.log_ratio(values[0], values[1])
  else:
    diff = values[0] - values[1]
  contrast = f"{a} vs {b}"
  shown = matched_metric(metric, smooth_steps)
  kept, effs, dropped = [], [], []
  if not seeds:
    dropped.append((math.nan, f"no seed index has both {a} and {b}"))
  elif not levels.size:
    dropped.append((math.nan, "no training loss is reached by every model of the pair "
                              "while it is probed"))
  for k, level in enumerate(levels):
    why = [_missing_value(seed, v, reached[i, j, k], *_probed_span(probe_steps, probes[i, j]))
           for i, v in enumerate((a, b)) for j, seed in enumerate(seeds)
           if not math.isfinite(values[i, j, k])]
    if not why and not np.isfinite(diff[:, k]).all():
      why = ["a probe value is not positive, so it has no log-ratio"]
    if why:
      dropped.append((float(level), "; ".join(why)))
      continue
    kept.append(float(level))
    effs.append(fx.Effect(shown, contrast, tuple(cell) + ((LOSS_LEVEL, float(level)),),
                          stats.t_interval(diff[:, k]), metric.scale, len(seeds)))
  coords = {fx.VARIANT: [a, b], fx.SEED: seeds, "loss_level": levels}
  dims = (fx.VARIANT, fx.SEED, "loss_level")
  return MatchedLoss(shown, contrast, tuple(cell), tuple(kept), tuple(effs), tuple(dropped),
                     xr.DataArray(reached, dims=dims, coords=coords),
                     xr.DataArray(values, dims=dims, coords=coords), smooth_steps)


def at_matched_loss(ds: xr.Dataset, metric: Metric, a: str, b: str, *, levels=None,
                    n_levels: int = LEVELS,
                    smooth_steps: int = SMOOTH_STEPS) -> list[MatchedLoss]:
  """The metric's probe series of variant a against b at matched training loss, paired
  by seed index, one MatchedLoss per cell (the other labels). `levels` (losses) replaces
  the levels of each cell's common range (`common_levels`); a level that some paired
  seed has no value at (never reached, reached outside its probed steps) is dropped,
  with the reason."""
  if metric.over_time is None:
    raise ValueError(f"{metric.key} is not a time average; matched loss needs its series")
  if "train_loss" not in ds:
    raise ValueError("matched loss needs the per-step training loss (train_loss)")
  return [_matched_in_cell(ds, metric, a, b, cell, levels, n_levels, smooth_steps)
          for cell in fx.cells(ds)]


# --- per-seed ratios over time (the figure) and agreement of the views

def ratio_over_time(ds: xr.Dataset, metric: Metric, a: str, b: str, cell) -> xr.DataArray:
  """(seed, time): per seed index, log(a/b) of the metric's per-step series in a cell
  (difference a - b for difference metrics); seeds without both variants left out."""
  over_time = metric.over_time
  sides, seeds = _paired(ds, a, b, cell)
  va, vb = (over_time.per_step(s).transpose("model", over_time.time).values[_by_seed(s, seeds)]
            for s in sides.values())
  diff = stats.log_ratio(va, vb) if metric.scale == "ratio" else va - vb
  return xr.DataArray(diff, dims=(fx.SEED, over_time.time),
                      coords={fx.SEED: seeds, over_time.time: ds[over_time.time].values})


AGREE, OPPOSITE, PARTLY, UNCLEAR = ("agree", "opposite signs", "partly inconclusive",
                                    "inconclusive")


@dataclasses.dataclass(frozen=True)
class Agreement:
  """How the verdicts of one contrast and cell read in several views."""
  kind: str  # AGREE, OPPOSITE, PARTLY or UNCLEAR
  verdicts: tuple[tuple[str, str], ...]  # (view, Effect.verdict), in the views' order

  def text(self) -> str:
    """'lower early, higher late, inconclusive at training loss 0.83'."""
    return ", ".join(f"{verdict} {view}" for view, verdict in self.verdicts)


def agreement(views: Mapping[str, fx.Effect]) -> Agreement:
  """The verdicts of one contrast and cell in several views ({view name: Effect}, e.g.
  "early", "late", "at training loss 0.83"): AGREE when all are lower or all higher,
  OPPOSITE when some are lower and some higher, PARTLY when one direction shows and
  the rest are inconclusive (or not estimated), UNCLEAR when none shows."""
  contrasts = {e.contrast for e in views.values()}
  if len(contrasts) > 1:
    raise ValueError(f"views of different contrasts: {sorted(contrasts)}")
  verdicts = tuple((view, e.verdict) for view, e in views.items())
  signs = {v for _, v in verdicts if v in ("lower", "higher")}
  if len(signs) == 2:
    kind = OPPOSITE
  elif signs:
    kind = AGREE if all(v in signs for _, v in verdicts) else PARTLY
  else:
    kind = UNCLEAR
  return Agreement(kind, verdicts)


def views(ds: xr.Dataset, metric: Metric, a: str, b: str,
          **matched_kw) -> dict[tuple, dict[str, fx.Effect]]:
  """Per cell, {view: Effect} of a vs b: "early", "late" (when the phase holds a probe
  step) and "at training loss L" per kept matched level; ready for `agreement`."""
  out: dict[tuple, dict[str, fx.Effect]] = {cell: {} for cell in fx.cells(ds)}
  for phase in PHASES:
    m = in_phase(metric, phase, ds)
    if m.available(ds):
      for e in fx.compare(ds, m, a, b):
        out[e.cell][phase] = e
  if "train_loss" in ds:
    for ml in at_matched_loss(ds, metric, a, b, **matched_kw):
      for level, e in zip(ml.levels, ml.effects):
        out[ml.cell][f"at {LOSS_LEVEL} {level:.3g}"] = e
  return out
