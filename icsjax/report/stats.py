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
from scipy import special

LEVEL = 0.95
ALPHA = 1 - LEVEL  # the family-wise error rate of the primary effects
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
  p: float = math.nan  # two-sided p-value of "mean difference = 0" (Student t)

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
  se = float(d.std(ddof=1) / math.sqrt(n))
  half = float(special.stdtrit(n - 1, 0.5 + level / 2) * se)
  if se > 0:
    p = float(2 * special.stdtr(n - 1, -abs(mean) / se))
  else:  # every pair gives the same difference: certain, unless that difference is 0
    p = 1.0 if mean == 0 else 0.0
  return Interval(mean, mean - half, mean + half, n, p)


def holm(p_values) -> np.ndarray:
  """Holm's step-down adjustment of a family of p-values (Holm 1979): sorted
  ascending, the k-th smallest (k = 0, 1, ...) is multiplied by (m - k), made
  monotone by a running maximum and capped at 1. Rejecting where the adjusted
  p < alpha keeps the chance of any false rejection in the family below alpha.
  NaN p-values (effects that could not be estimated) are not members of the
  family and stay NaN."""
  p = np.asarray(p_values, dtype=float)
  out = np.full(p.shape, np.nan)
  members = np.flatnonzero(np.isfinite(p))
  m = members.size
  order = members[np.argsort(p[members], kind="stable")]
  running = 0.0
  for k, i in enumerate(order):
    running = max(running, min(1.0, (m - k) * p[i]))
    out[i] = running
  return out


def log_ratio(a, b):
  """log(a / b) elementwise; NaN where either side is not positive, since a
  ratio of a sign-changing quantity has no meaning on a log scale."""
  a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
  with np.errstate(all="ignore"):
    return np.where((a > 0) & (b > 0), np.log(a) - np.log(b), np.nan)
