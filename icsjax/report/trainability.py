"""Which models trained, and the signals that explain why some did not: variance
collapse at initialisation, saturation, and the drift of pre-normalisation
inputs. Plain per-variant summaries for the answers of questions 1, 3 and 4."""

from __future__ import annotations

import numpy as np
import xarray as xr

from icsjax.report import effects as fx
from icsjax.report.wording import say

INIT_STEP = 0


def counts(ds: xr.Dataset, variant: str, cell) -> tuple[int, int]:
  """(trained, models) of one variant in one cell."""
  sel = fx.select(ds, variant, cell)
  return sel.sizes["model"] - fx.failed(sel), sel.sizes["model"]


def _count_text(ds, v, cell) -> str:
  ok, n = counts(ds, v, cell)
  sel = fx.select(ds, v, cell)
  why = f" ({fx.failures_text(sel, fx.failure_reasons(ds))})" if ok < n else ""
  return f"`{v}` trained in {ok}/{n} seeds{why}"


def by_depth(ds: xr.Dataset) -> dict:
  """{(depth, lr): 'none trained in 0/5 seeds (5 at chance); batchnorm ...'}."""
  out = {}
  for cell in fx.cells(ds):
    d = dict(cell)
    key = (d.get("depth"), d.get("lr"))
    out[key] = "; ".join(_count_text(ds, v, cell) for v in fx.variants(ds))
  return out


def untrained_note(ds: xr.Dataset) -> str:
  """Where a variant failed in every seed, its effects compare with an untrained
  network: the report says where, once."""
  where = [f"`{v}` at {fx.cell_text(cell)}" if cell else f"`{v}`"
           for v in fx.variants(ds) for cell in fx.cells(ds)
           for trained, models in [counts(ds, v, cell)] if models and not trained]
  return say("untrained", settings="; ".join(where)) if where else ""


def failure_glance(ds: xr.Dataset, depth) -> str:
  """At the deepest depth, which variants failed where the others trained."""
  cells = [c for c in fx.cells(ds) if dict(c).get("depth") == depth]
  parts = []
  for v in fx.variants(ds):
    trained = [counts(ds, v, c) for c in cells]
    ok, n = sum(t[0] for t in trained), sum(t[1] for t in trained)
    parts.append(f"`{v}` trained in {ok}/{n} models")
  if not parts:
    return ""
  return say("q3.failed_glance", depth=depth, failures=", ".join(parts))


def _rate_range(usable: list, lrs: list) -> str:
  """'0.05 to 2' when the usable rates are consecutive in the sorted sweep, else a list."""
  at = [lrs.index(x) for x in usable]
  if len(usable) > 2 and at == list(range(at[0], at[-1] + 1)):
    return f"{usable[0]:g} to {usable[-1]:g}"
  return ", ".join(f"{x:g}" for x in usable)


def _rate_answers(ds: xr.Dataset) -> list[tuple[str, bool, str]]:
  """Per variant (and cell of the other labels): (its name, whether every seed trained
  at every lr, the sentence saying at which rates every seed trained)."""
  reasons = fx.failure_reasons(ds)
  out = []
  for v in fx.variants(ds):
    for cell in fx.cells(ds, "lr"):
      part = fx.select(ds, v, cell)
      if not part.sizes["model"]:
        continue
      lrs = sorted(fx.level_values(part, "lr"))
      at = {lr: fx.select(part, None, (("lr", lr),)) for lr in lrs}
      usable = [lr for lr in lrs if fx.failed(at[lr]) == 0]
      where = f" ({fx.cell_text(cell)})" if cell else ""
      failures = "; ".join(f"at lr = {lr:g}: {fx.failures_text(at[lr], reasons)}"
                           for lr in lrs if lr not in usable)
      if len(usable) == len(lrs):
        text = say("q4.lr_every", variant=v, where=where, lrs=_rate_range(lrs, lrs))
      elif usable:
        text = say("q4.lr_range", variant=v, where=where, good=_rate_range(usable, lrs),
                   failures=failures)
      else:
        text = say("q4.lr_none", variant=v, where=where, failures=failures)
      out.append((f"`{v}`{where}", len(usable) == len(lrs), text))
  return out


def _one_lr(ds: xr.Dataset) -> bool:
  return "lr" not in fx.label_levels(ds) or len(fx.level_values(ds, "lr")) < 2


def learning_rates_glance(ds: xr.Dataset) -> str:
  """The learning-rate answer in brief: the settings that trained at every rate in one
  sentence, then each one that did not."""
  if _one_lr(ds):
    return say("q4.lr_one")
  answers = _rate_answers(ds)
  lrs = sorted(fx.level_values(ds, "lr"))
  every = [name for name, all_trained, _ in answers if all_trained]
  out = [say("q4.lr_glance_every", which=", ".join(every), lrs=_rate_range(lrs, lrs))
         ] if every else []
  return " ".join(out + [text for _, all_trained, text in answers if not all_trained])


def learning_rates(ds: xr.Dataset) -> list[str]:
  """Per variant (and cell of the other labels), the learning rates at which every seed
  trained, and how many failed at the others; whether the sweep found a limit."""
  if _one_lr(ds):
    return [say("q4.lr_one")]
  sentences = [text for _, _, text in _rate_answers(ds)]
  if fx.failed(ds) == 0:
    sentences.append(say("q4.lr_no_limit", largest=f"{max(fx.level_values(ds, 'lr')):g}"))
  return sentences


def learning_rates_text(ds: xr.Dataset) -> str:
  """The learning-rate answer as one paragraph, with what "trained" means."""
  return say("q4.lr_intro", sentences=" ".join(learning_rates(ds)))


# --- signal propagation and saturation (the batch-statistic records)

def variance_collapse(ds: xr.Dataset):
  """(first layer, last layer, layers): the mean over models of each layer's
  pre-activation variance across monitor examples at initialisation; None when the
  records lack it."""
  if "monitor_preact_var" not in ds or INIT_STEP not in ds.record_step.values:
    return None
  per_layer = ds.monitor_preact_var.sel(record_step=INIT_STEP).mean("model").values
  per_layer = per_layer[np.isfinite(per_layer)]
  if per_layer.size < 2:
    return None
  return float(per_layer[0]), float(per_layer[-1]), int(per_layer.size)


def propagation_factor(ds: xr.Dataset):
  """The geometric mean change of that variance per layer, first to last layer."""
  collapse = variance_collapse(ds)
  if collapse is None or collapse[0] <= 0:
    return None
  first, last, layers = collapse
  return (last / first) ** (1 / (layers - 1))


# A per-layer factor within these bounds keeps the scale over a few layers (0.8^5 = 0.33).
STEADY = (0.8, 1.25)


def propagation_verdict(factor: float) -> str:
  """'lower' (fades), 'higher' (grows) or 'inconclusive' (keeps its scale)."""
  return "lower" if factor < STEADY[0] else "higher" if factor > STEADY[1] else "inconclusive"


def saturation_by_variant(ds: xr.Dataset) -> dict:
  """{variant: fraction of saturated units, over models, record steps and layers}."""
  if "saturated_fraction" not in ds:
    return {}
  return {v: float(np.nanmean(fx.select(ds, v, ()).saturated_fraction.values))
          for v in fx.variants(ds)}


def preact_drift_by_variant(ds: xr.Dataset) -> dict:
  """{variant: |batch mean of the pre-normalisation input, last record − first|, in
  units of its first standard deviation, averaged over layers, units and models}."""
  if not {"preact_mean", "preact_var"} <= set(ds.data_vars):
    return {}
  first, last = ds.record_step.values[0], ds.record_step.values[-1]
  mean, var = ds.preact_mean, ds.preact_var
  drift = abs(mean.sel(record_step=last) - mean.sel(record_step=first)) / np.sqrt(
      var.sel(record_step=first))
  return {v: float(np.nanmean(fx.select(drift.to_dataset(name="d"), v, ()).d.values))
          for v in fx.variants(ds)}
