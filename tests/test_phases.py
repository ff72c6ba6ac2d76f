"""icsjax.report.phases on hand-built records: phases pick the right probe steps,
matched training loss equals a hand computation, and the views' verdicts are read
without averaging a change of sign away."""

import itertools
import math

import numpy as np
import pytest
import xarray as xr
from scipy import stats as scipy_stats

from icsjax.report import effects as fx
from icsjax.report import figures
from icsjax.report import metrics
from icsjax.report import phases
from icsjax.report import stats

BETA = metrics.BETA_SMOOTHNESS


def _dataset(loss, beta, steps, probe_steps, variants=("none", "batchnorm"), seeds=(0, 1, 2),
             lrs=(0.1,)):
  """Records shaped like analysis.load's: models indexed by (variant, seed, lr), the
  per-step loss on `step` and a landscape probe on `landscape_step`. `loss(variant, seed,
  lr, steps)` and `beta(variant, seed, lr, probe_steps)` give each model's series."""
  models = list(itertools.product(variants, seeds, lrs))
  eta = np.array([0.5, 1.0, 2.0])
  b = np.array([beta(*m, probe_steps) for m in models], float)
  ds = xr.Dataset(
      {"train_loss": (("model", "step"), np.array([loss(*m, steps) for m in models], float)),
       "landscape_beta_smoothness": (("model", "landscape_step"), b),
       "landscape_loss_variation": (("model", "landscape_step"), 2 * b),
       "landscape_grad_diff": (("model", "landscape_step", "lr_multiple"),
                               b[:, :, None] * eta)},
      coords={"step": steps, "landscape_step": probe_steps, "lr_multiple": eta,
              "variant": ("model", [m[0] for m in models]),
              "seed": ("model", [m[1] for m in models]), "lr": ("model", [m[2] for m in models])})
  return ds.set_index(model=["variant", "seed", "lr"])


def _t_interval(d):
  d = np.asarray(d, float)
  half = scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
  return d.mean(), d.mean() - half, d.mean() + half


# --- the refactor leaves every metric's value as it was

def test_time_averaged_metrics_equal_their_former_formulas():
  rng = np.random.default_rng(0)
  steps, probes = np.arange(1, 41), np.arange(10, 41, 10)
  ds = _dataset(lambda *m: rng.uniform(0.5, 2, m[-1].size),
                lambda *m: rng.uniform(0.5, 2, m[-1].size), steps, probes)
  ds["landscape_grad_diff"][1, 2, 0] = np.nan  # a diverged record: that model is NaN
  former = {
      metrics.EARLY_LOSS: ds.train_loss.sel(step=ds.step <= ds.step.max() * 0.1).mean(
          "step", skipna=False),
      metrics.GRAD_PREDICTIVENESS: ds.landscape_grad_diff.mean(
          ["landscape_step", "lr_multiple"], skipna=False),
      BETA: ds.landscape_beta_smoothness.mean("landscape_step", skipna=False),
      metrics.LOSS_VARIATION: ds.landscape_loss_variation.mean("landscape_step", skipna=False)}
  for metric, want in former.items():
    got = metric.compute(ds)
    assert got.dims == ("model",)
    assert got.values.tobytes() == want.values.tobytes(), metric.key
  assert np.isnan(metrics.GRAD_PREDICTIVENESS.compute(ds).values[1])


# --- phases

def test_phases_pick_their_steps():
  steps, probes = np.arange(1, 41), np.arange(5, 41, 5)  # T = 40: T/4 = 10, T/2 = 20
  ds = _dataset(lambda v, s, lr, t: t * 1.0 + s, lambda v, s, lr, t: t * 1.0 + s, steps,
                probes)
  early, late = (phases.in_phase(BETA, p, ds) for p in ("early", "late"))
  # Probes 5 and 10 (10 = T/4 is early); 25..40 (20 = T/2 is in neither phase).
  np.testing.assert_array_equal(early.compute(ds).values, 7.5 + ds.seed.values)
  np.testing.assert_array_equal(late.compute(ds).values, 32.5 + ds.seed.values)
  assert early.over_time.steps(ds).values.tolist() == [5, 10]
  assert late.over_time.steps(ds).values.tolist() == [25, 30, 35, 40]
  assert "T/4 = 10" in early.label and "T/2 = 20" in late.label and early.key.endswith("_early")
  # Early training loss over the late phase: the training loss of steps 21..40.
  late_loss = phases.in_phase(metrics.EARLY_LOSS, "late")
  np.testing.assert_array_equal(late_loss.compute(ds).values, 30.5 + ds.seed.values)
  assert late_loss.label.startswith("training loss, late phase")
  with pytest.raises(ValueError, match="'early', 'late'"):
    phases.in_phase(BETA, "middle")
  with pytest.raises(ValueError, match="not a time average"):
    phases.in_phase(metrics.FINAL_ACCURACY, "early")


def test_a_phase_without_a_probe_step_is_unavailable_and_says_why():
  steps, probes = np.arange(1, 41), np.array([20, 40])
  ds = _dataset(lambda *m: np.ones(m[-1].size), lambda *m: np.ones(m[-1].size), steps, probes)
  early = phases.in_phase(BETA, "early", ds)
  assert not early.available(ds) and phases.in_phase(BETA, "late", ds).available(ds)
  reason = phases.unavailable_reason(early, ds)
  assert "no `landscape_step` falls in it" in reason and "steps 20, 40" in reason
  assert phases.unavailable_reason(BETA, ds) is None
  assert "not in the records" in phases.unavailable_reason(metrics.GRAD_ICS, ds)
  views = phases.views(ds, BETA, "batchnorm", "none", smooth_steps=1)
  assert "early" not in views[(("lr", 0.1),)] and "late" in views[(("lr", 0.1),)]


# --- matched training loss

def test_moving_average_equals_a_loop():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 23))
  x[1, 15] = np.nan  # divergence: every window holding it is NaN
  for window in (1, 4, 5):
    want = np.full_like(x, np.nan)
    for i, j in np.ndindex(x.shape):
      part = x[i, max(j - (window - 1) // 2, 0):j + window // 2 + 1]
      want[i, j] = part.mean() if np.isfinite(part).all() else np.nan
    np.testing.assert_allclose(phases.moving_average(x, window), want, rtol=1e-12)
  assert np.isnan(phases.moving_average(x, 5)[1, 13:18]).all()
  assert np.isfinite(phases.moving_average(x, 5)[1, :13]).all()


RATES = {"none": (0.02, 0.025, 0.03), "batchnorm": (0.06, 0.07, 0.09)}


def _exp_loss(v, s, lr, t):
  return np.exp(-RATES[v][s] * t)


def _linear_beta(v, s, lr, t):
  return (1.0 + s if v == "none" else 3.0 - 0.5 * s) + (0.01 if v == "none" else 0.03) * t


def _first_step(v, s, level):
  """A brute-force search of the first step t with exp(-k t) <= level."""
  t = 1
  while math.exp(-RATES[v][s] * t) > level:
    t += 1
  return t


def test_matched_loss_equals_a_hand_computation():
  steps, probes = np.arange(1, 201), np.arange(10, 201, 10)
  ds = _dataset(_exp_loss, _linear_beta, steps, probes)
  (ml,) = phases.at_matched_loss(ds, BETA, "batchnorm", "none", smooth_steps=1)
  # Common range: the lowest loss at the first probe (the fastest model at step 10) down
  # to the highest lowest loss up to the last probe (the slowest at step 200).
  high, low = math.exp(-0.09 * 10), math.exp(-0.02 * 200)
  want_levels = [math.exp(math.log(high) + k / 6 * (math.log(low) - math.log(high)))
                 for k in range(1, 6)]
  np.testing.assert_allclose(ml.levels, want_levels, rtol=1e-12)
  assert not ml.dropped and len(ml.effects) == 5 and ml.cell == (("lr", 0.1),)
  for level, effect in zip(ml.levels, ml.effects):
    # A linear probe series interpolates to its own value at the crossing step.
    d = [math.log(_linear_beta("batchnorm", s, 0.1, _first_step("batchnorm", s, level))
                  / _linear_beta("none", s, 0.1, _first_step("none", s, level)))
         for s in (0, 1, 2)]
    np.testing.assert_allclose(effect.shown(), [math.exp(x) for x in _t_interval(d)],
                               rtol=1e-9)
    assert effect.contrast == "batchnorm vs none" and effect.seeds == 3
    assert effect.cell == (("lr", 0.1), ("training loss", level))
    for v, s in itertools.product(("none", "batchnorm"), (0, 1, 2)):
      assert ml.reached_at.sel(variant=v, seed=s, loss_level=level) == _first_step(v, s, level)
  assert ml.lines()[0].startswith(f"at training loss {ml.levels[0]:.3g}: ×")
  assert ml.metric.key == "beta_smoothness_matched_loss"


def test_matched_loss_interpolates_between_probe_steps():
  steps, probes = np.arange(1, 101), np.array([20, 60, 100])
  ds = _dataset(lambda v, s, lr, t: 10.0 / t if v == "none" else 5.0 / t,
                lambda v, s, lr, t: np.where(t < 60, 1.0, 3.0) * (2.0 if v == "none" else 1.0),
                steps, probes, seeds=(0, 1))
  (ml,) = phases.at_matched_loss(ds, BETA, "batchnorm", "none", levels=[0.25],
                                 smooth_steps=1, n_levels=1)
  # none: 10/t <= 0.25 first at t = 40, halfway from probe 20 (value 2) to 60 (value 6);
  # batchnorm at t = 20 (value 1).
  assert ml.reached_at.sel(variant="none").values.ravel().tolist() == [40.0, 40.0]
  np.testing.assert_allclose(ml.values.sel(variant="none").values.ravel(), [4.0, 4.0])
  np.testing.assert_allclose(ml.effects[0].interval.mean, math.log(1 / 4))


def test_a_level_a_seed_never_reaches_is_dropped_and_reported():
  steps, probes = np.arange(1, 201), np.arange(10, 201, 10)
  ds = _dataset(_exp_loss, _linear_beta, steps, probes)
  never = math.exp(-0.02 * 200) / 2  # below the slowest seed's last loss
  early = math.exp(-0.09 * 5)  # reached by the fastest seed before its first probe
  middle = math.exp(-0.02 * 150)
  (ml,) = phases.at_matched_loss(ds, BETA, "batchnorm", "none",
                                 levels=[never, middle, early], smooth_steps=1)
  assert ml.levels == (middle,) and len(ml.effects) == 1
  dropped = dict(ml.dropped)
  assert set(dropped) == {never, early}
  assert "seed 0 (none) never reaches it" in dropped[never]
  assert "seed 2 (batchnorm) reaches it at step 5, before its first probe" in dropped[early]
  assert np.isnan(ml.values.sel(loss_level=never, variant="none", seed=0))


def test_smoothing_and_divergence_in_matched_loss():
  steps, probes = np.arange(1, 101), np.arange(10, 101, 10)

  def loss(v, s, lr, t):
    out = np.exp(-0.05 * t) * (1 + 0.3 * np.cos(np.pi * t))  # noise of period 2
    if v == "batchnorm" and s == 1:
      out[60:] = np.nan  # diverged after step 60
    return out

  ds = _dataset(loss, _linear_beta, steps, probes, seeds=(0, 1))
  (ml,) = phases.at_matched_loss(ds, BETA, "batchnorm", "none", smooth_steps=2)
  smooth = phases.smoothed_loss(ds, 2)
  for v, s in itertools.product(("none", "batchnorm"), (0, 1)):
    series = smooth.sel(variant=v, seed=s).squeeze().values
    for level in ml.levels:
      want = steps[np.flatnonzero(series <= level)[0]]
      assert ml.reached_at.sel(variant=v, seed=s, loss_level=level) == want
  # The diverged model's last probe with a value is step 60: no level below its loss there.
  assert min(ml.levels) > np.nanmin(smooth.sel(variant="batchnorm", seed=1).values)


# --- agreement of the views

def test_a_sign_change_reads_lower_early_higher_late():
  steps, probes = np.arange(1, 1001), np.arange(50, 1001, 50)
  noise = np.random.default_rng(2).uniform(0.9, 1.1, (2, 5, probes.size))

  def beta(v, s, lr, t):
    base = 10.0 * noise[0, s]
    return base * np.where(t <= 500, 0.5, 2.0) * noise[1, s] if v == "batchnorm" else base

  ds = _dataset(lambda *m: np.exp(-0.003 * m[-1]), beta, steps, probes, seeds=range(5))
  by_view = phases.views(ds, BETA, "batchnorm", "none", smooth_steps=1)[(("lr", 0.1),)]
  assert by_view["early"].verdict == "lower" and by_view["late"].verdict == "higher"
  agree = phases.agreement({k: by_view[k] for k in ("early", "late")})
  assert agree.kind == phases.OPPOSITE and agree.text() == "lower early, higher late"
  # The whole-run average calls it higher: the sign change is what it hides.
  (whole,) = fx.compare(ds, BETA, "batchnorm", "none")
  assert whole.verdict == "higher"
  matched = [k for k in by_view if k.startswith("at training loss")]
  assert matched and phases.agreement(by_view).kind == phases.OPPOSITE


def _effect(mean, low, high, n=5, contrast="a vs none"):
  return fx.Effect(BETA, contrast, (), stats.Interval(mean, low, high, n), "ratio", n)


def test_agreement_kinds():
  lower, higher, unclear = _effect(-1, -2, -0.5), _effect(1, 0.5, 2), _effect(0, -1, 1)
  assert phases.agreement({"early": lower, "late": lower}).kind == phases.AGREE
  partly = phases.agreement({"early": lower, "late": unclear})
  assert partly.kind == phases.PARTLY and partly.text() == "lower early, inconclusive late"
  assert phases.agreement({"early": unclear, "late": _effect(1, 0, 2, n=1)}).kind == \
      phases.UNCLEAR
  assert phases.agreement({"early": higher, "late": lower, "x": unclear}).kind == \
      phases.OPPOSITE
  with pytest.raises(ValueError, match="different contrasts"):
    phases.agreement({"early": lower, "late": _effect(-1, -2, -0.5, contrast="b vs none")})


# --- the figure

def test_ratio_over_time_figure(tmp_path):
  steps, probes = np.arange(1, 101), np.arange(10, 101, 10)
  ds = _dataset(_exp_loss, _linear_beta, steps, probes, lrs=(0.1, 0.5))
  name, caption = figures.ratio_over_time(ds, tmp_path)
  assert name == "ratio_over_time.png" and "T/4" in caption
  assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  logs = phases.ratio_over_time(ds, BETA, "batchnorm", "none", (("lr", 0.5),))
  assert logs.dims == ("seed", "landscape_step")
  want = [[math.log(_linear_beta("batchnorm", s, 0.5, t) / _linear_beta("none", s, 0.5, t))
           for t in probes] for s in (0, 1, 2)]
  np.testing.assert_allclose(logs.values, want, rtol=1e-12)
  only_bn = ds.isel(model=np.flatnonzero(ds.variant.values == "batchnorm"))
  assert figures.ratio_over_time(only_bn, tmp_path) is None
