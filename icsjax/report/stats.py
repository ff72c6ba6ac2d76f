"""Confidence intervals from paired differences over seed indices.

Models that differ only in their variant share the seed index, hence the data
order and the initial weights of the layers they have in common; the
difference of a paired measurement is then the variant's, and its spread over
seeds is what the interval is made of (a Student t interval: seeds are few).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

LEVEL = 0.95
# Below this many seeds a t interval rests on a spread estimated from almost
# nothing; the report says so next to every such interval.
MIN_SEEDS = 5


@dataclasses.dataclass(frozen=True)
class Interval:
  """Mean of paired differences and its two-sided confidence interval."""
  mean: float
  low: float
  high: float
  n: int  # pairs with a finite difference

  @property
  def sign(self) -> int:
    """+1 or -1 when the interval excludes zero on that side; 0 when it spans zero
    or could not be computed."""
    if not (math.isfinite(self.low) and math.isfinite(self.high)):
      return 0
    return 1 if self.low > 0 else -1 if self.high < 0 else 0

  @property
  def few_seeds(self) -> bool:
    return self.n < MIN_SEEDS


def t_interval(differences, level: float = LEVEL) -> Interval:
  """Student t interval of the mean of finite `differences` (NaNs are left out:
  a pair with a diverged or unmeasured model has no difference)."""
  d = np.asarray(differences, dtype=float).ravel()
  d = d[np.isfinite(d)]
  n = int(d.size)
  if n == 0:
    return Interval(math.nan, math.nan, math.nan, 0)
  mean = float(d.mean())
  if n < 2:
    return Interval(mean, math.nan, math.nan, n)
  half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
  return Interval(mean, mean - half, mean + half, n)


def log_ratio(a, b):
  """log(a / b) elementwise; NaN where either side is not positive, since a
  ratio of a sign-changing quantity has no meaning on a log scale."""
  a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
  with np.errstate(all="ignore"):
    return np.where((a > 0) & (b > 0), np.log(a) - np.log(b), np.nan)
