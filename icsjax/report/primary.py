"""Each question's primary effect, declared here before any record is read, and
the Holm adjustment of their family.

A report states about 150 intervals; read one by one at 95%, several would
exclude zero by chance alone. So each question names one effect in advance,
the one its answer rests on. The family adjusted together (Holm 1979) is
every primary effect in every cell (each value of the other swept labels,
e.g. each learning rate); a primary effect's verdict reads its adjusted
p-value. Every other effect in the report is exploratory: it reads its own
unadjusted interval and is labelled so.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import xarray as xr

from icsjax.report import effects as fx
from icsjax.report import inference as tt
from icsjax.report import metrics as m
from icsjax.report import stats

BATCHNORM = "batchnorm"
NOISY = fx.NOISY_PREFIX + BATCHNORM


@dataclasses.dataclass(frozen=True)
class Primary:
  question: int
  claim: str  # what the effect measures, in words
  # ds -> the effect in every cell ([] when the study cannot estimate it)
  estimate: Callable[[xr.Dataset], list]


def _between(metric, a: str, b: str):
  def estimate(ds):
    if not (metric.available(ds) and {a, b} <= set(fx.variants(ds))):
      return []
    return fx.compare(ds, metric, a, b)
  return estimate


def _depth_interaction(ds):
  depths = fx.level_values(ds, "depth") if "depth" in fx.label_levels(ds) else []
  if len(depths) < 2 or not {BATCHNORM, fx.BASELINE} <= set(fx.variants(ds)):
    return []
  return fx.depth_interaction(ds, m.EARLY_LOSS, BATCHNORM, fx.BASELINE, max(depths),
                              min(depths))


def smallest_defined_batch(ds) -> int | None:
  """The smallest test batch size at which every batch-norm model's batch statistics
  are defined (a dense batch norm over one example is not)."""
  sel = fx.select(ds, BATCHNORM, ())
  ok = sel.stats_mode_defined.sel(stats_mode="batch")
  sizes = [int(b) for b in ds.test_batch_size.values if bool(ok.sel(test_batch_size=b).all())]
  return min(sizes) if sizes else None


def _test_time_gap(ds):
  """Running minus batch statistics at the smallest defined test batch size, last
  test-time step; without test-time records, at the training batch size."""
  if BATCHNORM not in fx.variants(ds):
    return []
  if not tt.has_stats(ds):
    return fx.within(ds, m.TEST_MODE_GAP, BATCHNORM) if m.TEST_MODE_GAP.available(ds) else []
  size = smallest_defined_batch(ds)
  if size is None:
    return []
  last = tt.steps(ds)[-1]
  es = tt.within(tt.running_vs_batch(ds), tt.RUNNING_VS_BATCH, BATCHNORM)
  return tt.only(es, test_batch_size=size, test_time_step=last)


PRIMARY = (
    Primary(1, "gradient-ICS of `batchnorm` over `none`",
            _between(m.GRAD_ICS, BATCHNORM, fx.BASELINE)),
    Primary(2, "early training loss of `noisy_batchnorm` over `batchnorm`",
            _between(m.EARLY_LOSS, NOISY, BATCHNORM)),
    Primary(3, "how `batchnorm`'s early-loss ratio to `none` changes from the shallowest "
               "to the deepest network", _depth_interaction),
    Primary(4, "scale-aware sharpness of `batchnorm` over `none`",
            _between(m.SCALED_SHARPNESS, BATCHNORM, fx.BASELINE)),
    Primary(5, "test accuracy of `batchnorm` with running minus batch statistics, at the "
               "smallest test batch with defined statistics", _test_time_gap),
)


def family(ds: xr.Dataset) -> dict[int, list]:
  """{question: its primary effects, one per cell, each with its Holm-adjusted p}."""
  found = {p.question: fx.with_resolution(ds, p.estimate(ds)) for p in PRIMARY}
  flat = [(q, i) for q, es in found.items() for i in range(len(es))]
  adjusted = stats.holm([found[q][i].interval.p for q, i in flat])
  out = {q: list(es) for q, es in found.items()}
  for (q, i), p in zip(flat, adjusted):
    out[q][i] = dataclasses.replace(out[q][i], adjusted_p=float(p), primary=True)
  return out


def family_note(sections) -> str:
  """How the answers above were tested, for the reader of the glance."""
  members = [e for s in sections for e in s.effects if e.primary]
  m_ = int(sum(np.isfinite(e.adjusted_p) for e in members))
  return (f"Each answer rests on one primary effect declared before the data were read; "
          f"the {m_} primary effects (one per question and setting) are adjusted together "
          f"(Holm), so their verdicts hold at a 5% family-wise error rate. Every other "
          f"number below is exploratory: a 95% interval read on its own.")
