"""The end-of-run table: final metrics per variant, mean +- std over the seeds that
trained (icsjax.failure); a cell none of whose seeds trained says why."""

from __future__ import annotations

import math
import textwrap

import numpy as np

from icsjax import failure
from icsjax import records as records_lib
from icsjax import store
from icsjax.number_text import number

NOTE_WIDTH = 100  # the footnote wraps: a report shows the table in a fixed-width box


def _final(values: np.ndarray, how: str, window: int) -> np.ndarray:
  """Per-model final value: the last entry, or the mean of the last `window` steps."""
  if how == "last":
    return values[:, -1]
  with np.errstate(all="ignore"):
    if how == "mean":
      return np.mean(values.reshape(len(values), -1), axis=1)
    if how == "mean_after_first_layer":  # the first layer's G' is G: no shift by definition
      return np.mean(values[..., 1:].reshape(len(values), -1), axis=1)
    return np.mean(values[:, -window:], axis=1)


def rows(datasets: dict, eval_every: int) -> list[dict]:
  """One row per group and combination of swept values, aggregated over the seeds
  that trained. "every_seed" is "diverged" or "failed" when none did, else ""."""
  out = []
  for ds in datasets.values():
    labels = [k for k in ds.coords if ds.coords[k].dims == ("model",) and k not in
              ("model", "seed")]
    keys = [tuple(str(ds.coords[k].values[m]) for k in labels) for m in range(ds.sizes["model"])]
    failed = failure.failed_models(ds)
    for key in dict.fromkeys(keys):
      sel = np.array([k == key for k in keys])
      diverged = ds["diverged_step"].values[sel] > 0
      row = {"labels": dict(zip(labels, key)), "seeds": int(sel.sum()),
             "diverged": int(diverged.sum()), "failed": int(failed[sel].sum()),
             "every_seed": ("diverged" if diverged.all() else
                            "failed" if failed[sel].all() else "")}
      for c in records_lib.summary_columns():
        if c.variable in ds:
          # float64: a trained model's large loss squared must not overflow into "± inf"
          v = _final(ds[c.variable].values[sel].astype(np.float64), c.reduce, eval_every)
          # a "last" column of a per-layer record keeps its layer axis: mask whole models
          v = np.where(failed[sel].reshape((-1,) + (1,) * (v.ndim - 1)), np.nan, v)
          row[c.header] = (float(np.nanmean(v)) if np.isfinite(v).any() else np.nan,
                           float(np.nanstd(v)) if np.isfinite(v).any() else np.nan)
      out.append(row)
  return out


def format_table(table: list[dict]) -> str:
  """A plain-text table; values are mean +- std over the seeds that trained."""
  if not table:
    return "(no models)"
  label_keys = list(dict.fromkeys(k for r in table for k in r["labels"]))
  metric_keys = [c.header for c in records_lib.summary_columns()
                 if any(c.header in r for r in table)]
  header = label_keys + ["seeds", "diverged", "failed"] + metric_keys
  body = []
  for r in table:
    cells = [r["labels"].get(k, "") for k in label_keys] + [
        str(r["seeds"]), str(r["diverged"]), str(r["failed"])]
    for h in metric_keys:
      m, s = r.get(h, (np.nan, np.nan))
      cells.append("n/a" if h not in r else r["every_seed"] or mean_std_text(m, s))
    body.append(cells)
  widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
  line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
  note = ("mean ± std over the seeds that trained: failed seeds (diverged, or final test "
          "accuracy not above chance by a one-sided binomial test at p < 0.05, or final test "
          "MSE at least 0.95 x that of predicting the training targets' mean; diverged ones "
          "are counted among the failed) are excluded, and a cell none of whose seeds trained "
          "reads \"failed\" (\"diverged\" when every seed diverged); train: minibatch metrics over "
          "the last eval_every steps; test: last evaluation, eval mode = running "
          "statistics, train-mode BN = batch statistics of test batches; probes: grad-ICS "
          "and beta-smoothness are means over probe steps (grad-ICS over every weight "
          "layer after the first), lambda_max the last probe")
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(c) for c in body]
                   + [textwrap.fill(note, NOTE_WIDTH)])


def mean_std_text(mean: float, std: float) -> str:
  """'0.1234 ± 0.0056', '1.79e+31 ± 2.1e+30'; "diverged" for an infinite mean, "n/a"
  for none, and the mean alone where the spread overflows."""
  if math.isnan(mean):
    return "n/a"
  if math.isinf(mean):
    return "diverged"
  if not math.isfinite(std):
    return f"{number(mean)} (spread overflows)"
  return f"{number(mean)} ± {number(std, digits=2)}"


def write(workdir, datasets: dict, eval_every: int) -> str:
  """Writes WORKDIR/summary.txt; returns its table."""
  table = format_table(rows(datasets, eval_every))
  store.write_atomic(workdir / "summary.txt", lambda f: f.write((table + "\n").encode()))
  return table
