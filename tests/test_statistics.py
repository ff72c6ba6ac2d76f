"""Holm's adjustment, the t test's p-value and the resolution rule, against hand
computations."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from icsjax.report import effects as fx
from icsjax.report import metrics as m
from icsjax.report import stats


def _holm_by_hand(p):
  """Holm 1979 as its definition reads: reject H_(k) while p_(k) <= alpha/(m-k); the
  adjusted p_(k) is the smallest alpha at which H_(k) is rejected."""
  m_ = len(p)
  order = sorted(range(m_), key=lambda i: p[i])
  out = [0.0] * m_
  for rank, i in enumerate(order):
    out[i] = min(1.0, max((m_ - j) * p[order[j]] for j in range(rank + 1)))
  return out


def test_holm_against_the_definition():
  rng = np.random.default_rng(0)
  for size in (1, 2, 5, 12):
    p = rng.uniform(0, 0.2, size).tolist()
    np.testing.assert_allclose(stats.holm(p), _holm_by_hand(p), rtol=1e-12)
  # A worked example: 0.01, 0.04, 0.03, 0.005 -> 0.03, 0.06, 0.06, 0.02.
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])


def test_holm_leaves_unestimated_effects_out_of_the_family():
  adjusted = stats.holm([0.01, math.nan, 0.02])
  assert math.isnan(adjusted[1])
  np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.02])  # a family of two


def test_rejections_by_brute_force():
  """Holm rejects exactly the hypotheses the sequential procedure rejects."""
  for p in itertools.product((0.001, 0.012, 0.02, 0.3), repeat=3):
    alpha, m_ = 0.05, len(p)
    rejected, order = set(), sorted(range(m_), key=lambda i: p[i])
    for k, i in enumerate(order):
      if p[i] > alpha / (m_ - k):
        break
      rejected.add(i)
    assert {i for i, a in enumerate(stats.holm(p)) if a <= alpha} == rejected


def test_t_p_value_matches_scipy():
  d = np.array([0.3, -0.1, 0.5, 0.2, 0.4])
  iv = stats.t_interval(d)
  assert iv.p == pytest.approx(scipy_stats.ttest_1samp(d, 0.0).pvalue, rel=1e-10)
  assert stats.t_interval([0.25, 0.25, 0.25]).p == 0.0  # no spread, not zero
  assert stats.t_interval([0.0, 0.0]).p == 1.0
  assert math.isnan(stats.t_interval([0.2]).p)


def _effect(mean_diffs, metric, **kw):
  return fx.Effect(metric, "a vs b", (), stats.t_interval(mean_diffs), metric.scale,
                   len(mean_diffs), **kw)


def test_a_difference_under_one_test_example_is_no_finding():
  one = 1 / 300
  small = _effect([0.5 * one, 0.4 * one, 0.6 * one, 0.5 * one], m.FINAL_ACCURACY,
                  resolution=one)
  assert small.interval.sign == 1 and small.verdict == "below resolution"
  large = _effect([2 * one, 3 * one, 2.5 * one], m.FINAL_ACCURACY, resolution=one)
  assert large.verdict == "higher"


def test_a_primary_effect_reads_its_adjusted_p():
  e = _effect([0.1, 0.12, 0.09, 0.11], m.EARLY_LOSS)
  assert e.verdict == "higher" and e.role == "exploratory"
  import dataclasses
  assert dataclasses.replace(e, primary=True, adjusted_p=0.2).verdict == "inconclusive"
  kept = dataclasses.replace(e, primary=True, adjusted_p=0.001)
  assert kept.verdict == "higher" and kept.role.startswith("primary (Holm p = 0.001")
