"""The report's tables: paired effects, per-variant values, definitions."""

from __future__ import annotations

import math

import xarray as xr

from icsjax.number_text import number
from icsjax.report import effects as fx
from icsjax.report import render as r


def effects_table(effects) -> r.Table:
  rows = []
  for e in effects:
    n = e.interval.n
    seeds = f"{n}" + (" (fewer than 5!)" if e.interval.few_seeds else "")
    if e.seeds > n:
      seeds += f"; {e.seeds - n} pair(s) dropped"
    kind = "ratio" if e.scale == "ratio" else "difference"
    rows.append((e.contrast, f"{e.metric.label} ({kind})", e.cell_text(), e.text(), seeds,
                 e.verdict, e.role))
  return r.Table(("comparison", "measure", "where", "effect [95% CI]", "seeds paired",
                  "reading", "role"), tuple(rows))


def variant_table(ds: xr.Dataset, metrics) -> r.Table:
  """Per variant and cell: each metric's mean [95% t interval] over seeds (not paired)."""
  frames = [(metric, fx.per_variant_summary(ds, metric)) for metric in metrics]
  keys = [fx.VARIANT] + fx.cell_levels(ds)
  rows = []
  for i in range(len(frames[0][1])):
    row = [fx.value_text(frames[0][1].iloc[i][k]) for k in keys]
    cell = tuple((k, frames[0][1].iloc[i][k]) for k in keys[1:])
    for metric, frame in frames:
      s = frame.iloc[i]
      if math.isnan(s["mean"]):
        row.append(_no_value(fx.select(ds, s[fx.VARIANT], cell)))
        continue
      ci = "" if math.isnan(s.low) else \
          f" [{number(s.low, metric.fmt)}, {number(s.high, metric.fmt)}]"
      row.append(f"{number(s['mean'], metric.fmt)}{ci}")
    rows.append(tuple(row))
  return r.Table(tuple(keys) + tuple(metric.label for metric, _ in frames), tuple(rows))


def _no_value(part: xr.Dataset) -> str:
  """Why a variant and cell has no mean: every model diverged, or failed, or neither."""
  n = part.sizes["model"]
  if n and fx.diverged(part) == n:
    return "diverged"
  if n and fx.failed(part) == n:
    return "failed"
  return "n/a"


def definitions(metrics) -> r.Bullets:
  return r.Bullets(tuple(f"**{x.label}:** {x.definition}." for x in metrics))
