"""Question 5 from the test-time records (docs/measurements.md, "Test time";
icsjax.inference).

Three measured parts, each a seed-paired effect per cell (the other swept
labels, e.g. lr or bn_momentum) and per value of the record's own axes, which
join the cell (test batch size, test-time step, corruption, n, N):
1. the train/eval-mode gap: accuracy with running minus batch statistics per test
   batch size, at the first and the last test-time step; population minus running;
2. the fall under shift: clean minus shifted accuracy without adaptation, per
   corruption at the highest severity, per variant and against `none`;
3. what adaptation recovers: adapted (full, every prior N) minus unadapted
   accuracy of the batch-norm variants, per corruption at the highest severity.

Undefined entries (batch statistics of a one-element set; ``stats_mode_defined``,
``shift_defined``) are dropped before any number is formed: they are neither
averaged nor counted as a missing pair.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from icsjax import records as records_lib
from icsjax.norms import BATCH_NORM_KINDS
from icsjax.report import effects as fx
from icsjax.report import render as r
from icsjax.report.metrics import Metric
from icsjax.report import wording as w
from icsjax.report.tables import effects_table

STATS = "stats_mode_accuracy"
SHIFT = "shift_accuracy"
# The record axes as they appear in an effect's "where" column.
NAMES = {"test_batch_size": "test batch", "test_time_step": "step", "corruption": "corruption",
         "adapt_n": "n", "adapt_prior": "N"}


def _m(key, label, definition, var) -> Metric:
  return Metric(key, label, definition, "difference", (var,), lambda ds: None, ".3f",
                cadence=records_lib.BY_NAME["test_time"].cadence, per_example=True)


RUNNING_VS_BATCH = _m(
    "running_vs_batch", "test accuracy, running minus batch statistics",
    "test accuracy with the running (EMA) statistics (eval mode) minus that with each test "
    "batch normalised by its own statistics (train mode), at one test batch size and "
    "test-time step, over the same test examples", STATS)
POPULATION_VS_RUNNING = _m(
    "population_vs_running", "test accuracy, population minus running statistics",
    "test accuracy with population statistics recomputed from the current weights (Ioffe "
    "& Szegedy Alg. 2) minus that with the running statistics, at the largest test batch "
    "size", STATS)
SHIFT_DROP = _m(
    "shift_drop", "accuracy lost under shift",
    "test accuracy on clean inputs minus that on shifted inputs, both without adaptation "
    "(running statistics), at the highest severity and the last test-time step", SHIFT)
ADAPT_GAIN = _m(
    "adapt_gain", "accuracy gained by BN adaptation",
    "test accuracy with the batch-norm statistics re-estimated on n shifted examples and "
    "mixed with the running ones by the prior N/(N+n) (Schneider et al. 2020; N = 0: full "
    "adaptation) minus that without adaptation, at the highest severity and the last "
    "test-time step", SHIFT)
METRICS = (RUNNING_VS_BATCH, POPULATION_VS_RUNNING, SHIFT_DROP, ADAPT_GAIN)


def has_stats(ds) -> bool:
  return STATS in ds and "stats_mode_defined" in ds.coords


def has_shift(ds) -> bool:
  return (SHIFT in ds and "shift_defined" in ds.coords and ds.sizes.get("corruption", 0) > 1
          and ds.sizes.get("adapt_n", 0) > 0 and ds.sizes.get("adapt_prior", 0) > 0)


def bn_variants(ds) -> list[str]:
  return [v for v in fx.variants(ds) if v in BATCH_NORM_KINDS]


def steps(ds) -> list:
  """The test-time steps the gap is reported at: the first (early training) and the last."""
  s = ds.test_time_step.values.tolist()
  return sorted({s[0], s[-1]})


# --- per-model values, undefined entries masked

def stats_accuracy(ds) -> tuple[xr.DataArray, xr.DataArray]:
  """(accuracy with undefined entries NaN, defined) over (model, test_time_step,
  stats_mode, test_batch_size)."""
  acc = ds[STATS]
  defined = ds.stats_mode_defined.broadcast_like(acc).astype(bool)
  return acc.where(defined), defined


def shift_accuracy(ds) -> tuple[xr.DataArray, xr.DataArray]:
  acc = ds[SHIFT]
  defined = ds.shift_defined.broadcast_like(acc).astype(bool)
  return acc.where(defined), defined


def _series(values: xr.DataArray, defined: xr.DataArray) -> pd.Series:
  """Per model and record axis, with undefined entries removed (not NaN)."""
  keep = list(values.dims)
  values = values.reset_coords(drop=True)
  defined = defined.transpose(*keep).reset_coords(drop=True)
  values = values.rename({d: NAMES[d] for d in keep if d in NAMES})
  defined = defined.rename({d: NAMES[d] for d in keep if d in NAMES})
  s, ok = values.to_series(), defined.to_series()
  return s[ok.reindex(s.index).to_numpy(bool)]


def running_vs_batch(ds) -> pd.Series:
  acc, ok = stats_accuracy(ds)
  at = dict(test_time_step=steps(ds))
  diff = acc.sel(stats_mode="running", **at) - acc.sel(stats_mode="batch", **at)
  both = ok.sel(stats_mode="running", **at) & ok.sel(stats_mode="batch", **at)
  return _series(diff, both)


def population_vs_running(ds) -> pd.Series:
  acc, ok = stats_accuracy(ds)
  at = dict(test_time_step=steps(ds), test_batch_size=ds.test_batch_size.values.max())
  diff = acc.sel(stats_mode="population", **at) - acc.sel(stats_mode="running", **at)
  both = ok.sel(stats_mode="population", **at) & ok.sel(stats_mode="running", **at)
  return _series(diff, both)


def _final_highest(ds):
  acc, ok = shift_accuracy(ds)
  at = dict(test_time_step=ds.test_time_step.values.max(), severity=ds.severity.values.max())
  return acc.sel(**at), ok.sel(**at)


def _unadapted(acc, ok):
  """Accuracy without adaptation: the same at every n and N (the first is taken)."""
  return (acc.sel(adapt="none").isel(adapt_n=0, adapt_prior=0, drop=True),
          ok.sel(adapt="none").isel(adapt_n=0, adapt_prior=0, drop=True))


def shift_drop(ds) -> pd.Series:
  acc, ok = _unadapted(*_final_highest(ds))
  shifted = [c for c in acc.corruption.values.tolist() if c != "clean"]
  diff = acc.sel(corruption="clean") - acc.sel(corruption=shifted)
  both = ok.sel(corruption="clean") & ok.sel(corruption=shifted)
  return _series(diff, both)


def adapt_gain(ds) -> pd.Series:
  acc, ok = _final_highest(ds)
  none, none_ok = _unadapted(acc, ok)
  diff = acc.sel(adapt="full", drop=True) - none
  both = ok.sel(adapt="full", drop=True) & none_ok
  return _series(diff.transpose("model", "corruption", ...),
                 both.transpose("model", "corruption", ...))


# --- effects

def within(values: pd.Series, metric: Metric, variant: str) -> list[fx.Effect]:
  if variant not in values.index.get_level_values(fx.VARIANT):
    return []
  return fx.effects(values.xs(variant, level=fx.VARIANT), metric, variant, "difference")


def versus(values: pd.Series, metric: Metric, a: str, b: str) -> list[fx.Effect]:
  diff = fx.paired(values, fx.VARIANT, a, b, log=False)
  return fx.effects(diff, metric, f"{a} vs {b}", "difference")


def cell_value(e: fx.Effect, key: str):
  return dict(e.cell)[key]


def grouped(effects, key: str, branches: str, prefix: str = "") -> str:
  """'<word> at <prefix>a, b; <word2> at <prefix>c': effects grouped by their value of
  `key` and then by verdict; where the other labels (e.g. bn_momentum) disagree, each
  of their cells is named in brackets."""
  items: dict[str, list[str]] = {}
  for v in dict.fromkeys(cell_value(e, key) for e in effects):
    es = [e for e in effects if cell_value(e, key) == v]
    if len({e.verdict for e in es}) == 1:
      items.setdefault(es[0].verdict, []).append(fx.value_text(v))
      continue
    varying = [k for k, _ in es[0].cell if k != key
               and len({dict(e.cell)[k] for e in es}) > 1]
    for e in es:
      where = fx.cell_text(tuple((k, x) for k, x in e.cell if k in varying))
      items.setdefault(e.verdict, []).append(f"{fx.value_text(v)} ({where})")
  return "; ".join(f"{w.words(branches, k)} at {prefix}{', '.join(vs)}"
                   for k, vs in items.items()) or "not measured"


def only(effects, **cell) -> list[fx.Effect]:
  return [e for e in effects if all(dict(e.cell).get(NAMES.get(k, k)) == v
                                    for k, v in cell.items())]


def _table_blocks(title, effects) -> list:
  if not effects:
    return []
  return [r.Para(f"{title} (95% t intervals over seed indices):"),
          effects_table(effects)]


def _no_gap_sentence(ds, v) -> str:
  """For a variant without batch norm: running and batch statistics coincide."""
  acc, _ = stats_accuracy(fx.select(ds, v, ()))
  gap = np.abs(acc.sel(stats_mode="running") - acc.sel(stats_mode="batch")).values
  gap = gap[np.isfinite(gap)]
  if not gap.size:
    return w.say("q5.no_comparison", variant=v)
  return w.say("q5.no_gap", variant=v, gap=f"{gap.max():.3g}")


def part_modes(ds, cfg) -> tuple[list, list, list, list, list]:
  """(answer sentences, at-a-glance sentences, detail sentences, effects, blocks) of the
  train/eval-mode gap; every part returns these five."""
  head, glance, details = [], [], []
  gap, pop = running_vs_batch(ds), population_vs_running(ds)
  ss = steps(ds)
  first, last = ss[0], ss[-1]
  batch = NAMES["test_batch_size"]
  gap_es_all, pop_es_all = [], []
  for v in bn_variants(ds):
    g, p = within(gap, RUNNING_VS_BATCH, v), within(pop, POPULATION_VS_RUNNING, v)
    gap_es_all += g
    pop_es_all += p
    head.append(w.say("q5.modes", variant=v, last=last, grouped=grouped(
        only(g, test_time_step=last), batch, "running_minus_batch", "test batch ")))
    glance.append(head[-1])
    if first != last:
      head.append(w.say("q5.modes_first", variant=v, first=first, grouped=grouped(
          only(g, test_time_step=first), batch, "running_minus_batch", "test batch ")))
    head.append(w.say("q5.population", variant=v, grouped=grouped(
        p, NAMES["test_time_step"], "population", "step ")))
    undefined = sorted({int(b) for b in ds.test_batch_size.values
                        if not fx.select(ds, v, ()).stats_mode_defined.sel(
                            stats_mode="batch", test_batch_size=b).values.all()})
    if undefined:
      details.append(w.say("q5.undefined", variant=v, sizes=", ".join(map(str, undefined))))
  if first == last and bn_variants(ds):
    details.append(w.say("q5.one_step", last=last))
  for v in fx.variants(ds):
    if v not in bn_variants(ds):
      details.append(_no_gap_sentence(ds, v))
  if "bn_momentum" in fx.label_levels(ds):
    details.append(w.say("q5.momentum_swept"))
  elif bn_variants(ds):
    details.append(w.say("q5.momentum_fixed", momentum=cfg.get("bn_momentum", "?")))
  effects = gap_es_all + pop_es_all
  blocks = (_table_blocks("Train/eval-mode gap per test batch size and test-time step",
                          gap_es_all)
            + _table_blocks("Population versus running statistics (largest test batch)",
                            pop_es_all))
  return head, glance, details, effects, blocks


def part_shift(ds) -> tuple[list, list, list, list, list]:
  head, glance, details = [], [], []
  drop = shift_drop(ds)
  sev = int(ds.severity.values.max())
  per_variant, versus_none = [], []
  for v in fx.variants(ds):
    es = within(drop, SHIFT_DROP, v)
    per_variant += es
    head.append(w.say("q5.shift", severity=sev, variant=v,
                      grouped=grouped(es, "corruption", "shift_loss")))
  for v, b in fx.baseline_contrasts(ds):
    es = versus(drop, SHIFT_DROP, v, b)
    versus_none += es
    head.append(w.say("q5.shift_vs", severity=sev, variant=v, baseline=b,
                      grouped=grouped(es, "corruption", "shift_vs_baseline")))
    glance.append(head[-1])
  if not fx.baseline_contrasts(ds):
    details.append(w.say("q5.no_shift_baseline"))
  blocks = (_table_blocks(f"Accuracy lost under shift, clean minus shifted, severity {sev}, "
                          f"no adaptation", per_variant)
            + _table_blocks("The same loss compared between variants", versus_none))
  return head, glance, details, per_variant + versus_none, blocks


def part_adapt(ds) -> tuple[list, list, list, list, list]:
  head, glance, details = [], [], []
  gain = adapt_gain(ds)
  sev = int(ds.severity.values.max())
  effects = []
  for v in bn_variants(ds):
    es = within(gain, ADAPT_GAIN, v)
    effects += es
    parts = {}
    for n in ds.adapt_n.values.tolist():
      for prior in ds.adapt_prior.values.tolist():
        sel = [e for e in es if cell_value(e, "n") == n and cell_value(e, "N") == prior]
        if sel:
          parts[n, prior] = w.say("q5.adapt_one", prior=f"{prior:g}", n=n,
                                  grouped=grouped(sel, "corruption", "adapt"))
    if parts:
      # at a glance: the largest n, with the smallest prior (full adaptation when N = 0)
      key = min(parts, key=lambda k: (-k[0], k[1]))
      glance.append(w.say("q5.adapt_glance", variant=v, severity=sev, part=parts[key]))
      head.append(w.say("q5.adapt", variant=v, severity=sev, parts="; ".join(parts.values())))
  undefined = ds.shift_defined.sel(adapt="full")
  if not bool(undefined.all()):
    details.append(w.say("q5.adapt_undefined"))
  if not bn_variants(ds):
    details.append(w.say("q5.adapt_no_bn"))
  details.append(w.say("q5.adapt_clean"))
  blocks = _table_blocks(f"Accuracy gained by adaptation (full, each prior N), severity {sev}",
                         effects)
  return head, glance, details, effects, blocks


TEST_TIME_DIM = "test_time_step"


def not_analysed(ds) -> str:
  """What the section cannot say yet, and whether the workdir holds the records for it."""
  recorded = sorted(str(k) for k, v in ds.data_vars.items() if TEST_TIME_DIM in v.dims)
  if recorded:
    return w.say("q5.not_analysed", records=", ".join(f"`{k}`" for k in recorded))
  return w.say("q5.not_recorded")


def no_shift() -> str:
  return w.say("q5.no_shift")
