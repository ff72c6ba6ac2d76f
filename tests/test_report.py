"""icsjax.report: figures, report.md, self-contained report.html, and effects whose
numbers and words follow from the records."""

import base64
import math
import re

import numpy as np
import pytest
from scipy import stats as scipy_stats

from conftest import tiny_config
from icsjax import analysis
from icsjax import report
from icsjax import runner
from icsjax import store
from icsjax.report import __main__ as report_main
from icsjax.report import stats
from icsjax.report import study_info

# The module's studies are module fixtures: one worker computes them once (pytest -n).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("report_studies")]


def _run(config, workdir):
  if "test_time_every" in config:  # a later feature; not what these tests are about
    config.test_time_every = 0
  runner.run(config, workdir, progress=False, log=lambda *_: None)
  return report.write(workdir)


@pytest.fixture(scope="module")
def default_study(tmp_path_factory):
  """The default study (3 variants x 2 learning rates x 5 seeds), 100 steps, with the
  gradient-ICS probe only: short, yet long enough for batch norm's effect on early
  training to be real."""
  from configs import default
  c = default.get_config()
  del c.sweep["depth"]  # its depth axis: tests/test_answers.py
  c.steps = c.segment_steps = 100
  c.record_every = c.eval_every = c.ics_every = 50
  c.landscape_every = c.curvature_every = 0
  workdir = tmp_path_factory.mktemp("default")
  md = _run(c, workdir)
  return workdir, md.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def depth_study(tmp_path_factory):
  """Variant names other than batchnorm, a depth sweep, two seeds, no probes."""
  c = tiny_config()
  c.sweep.norm = ("none", "layernorm")
  c.sweep.depth = (1, 2)
  c.sweep.lr = (0.1,)
  workdir = tmp_path_factory.mktemp("depth")
  md = _run(c, workdir)
  return workdir, md.read_text(encoding="utf-8")


def _t_interval(d):
  """Independent of icsjax.report.stats: mean and 95% Student t interval."""
  d = np.asarray(d, float)
  half = scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
  return d.mean(), d.mean() - half, d.mean() + half


def _group(workdir, **static):
  """The group whose models have these labels, from the raw per-group records (not
  analysis.load, which the report uses)."""
  return next(ds for ds in store.load(workdir).values()
              if all(ds[k].values[0] == v for k, v in static.items()))


def _per_seed(ds, value, **labels):
  """{seed: value(model index)} over the models of a group with the given labels."""
  out = {}
  for i in range(ds.sizes["model"]):
    if all(np.isclose(ds[k].values[i], v) for k, v in labels.items()):
      out[int(ds.seed.values[i])] = value(ds, i)
  return out


def _early_loss(ds, i):
  steps = ds.step.values
  return ds.train_loss.values[i, steps <= steps.max() * 0.1].mean()


def _drift(ds, i):
  q = list(ds["quantile"].values).index(0.5)
  median = ds.monitor_percentiles.values[i, :, :, :, q]  # record_step (0 first), layer, unit
  return np.nanmean(np.abs(median[-1] - median[0]))


def _grad_ics(ds, i):
  return ds.ics_grad_diff_relative.values[i][:, 1:].mean()  # layers after the first


def test_t_interval_matches_scipy():
  d = [0.3, -0.1, 0.5, 0.2, 0.4]
  iv = stats.t_interval(d + [math.nan])  # a pair without a value is left out
  low, high = scipy_stats.t.interval(0.95, 4, loc=np.mean(d), scale=scipy_stats.sem(d))
  assert iv.n == 5 and iv.few_seeds is False
  np.testing.assert_allclose([iv.mean, iv.low, iv.high], [np.mean(d), low, high], rtol=1e-12)
  assert iv.sign == 0 and stats.t_interval([1.0, 1.1, 0.9]).sign == 1
  assert math.isnan(stats.t_interval([2.0]).low)


@pytest.mark.parametrize("metric,fn,log", [("early training loss", _early_loss, True),
                                           ("drift of the median nonlinearity input", _drift,
                                            False),
                                           ("gradient-ICS ‖G−G′‖/‖G‖", _grad_ics, True)])
def test_numbers_equal_a_direct_computation(default_study, metric, fn, log):
  workdir, md = default_study
  bn_group, none_group = (_group(workdir, variant=v) for v in ("batchnorm", "none"))
  ds = analysis.load(workdir)
  effects = [e for s in report.sections(ds, study_info.read(workdir)) for e in s.effects
             if e.metric.label == metric and e.contrast == "batchnorm vs none"]
  for lr in (0.1, 0.5):
    bn, none = _per_seed(bn_group, fn, lr=lr), _per_seed(none_group, fn, lr=lr)
    assert sorted(bn) == sorted(none) == [0, 1, 2, 3, 4]
    d = [np.log(bn[s] / none[s]) if log else bn[s] - none[s] for s in sorted(bn)]
    want = _t_interval(d)
    if log:
      want = tuple(math.exp(x) for x in want)
      text = f"×{want[0]:.3g} [{want[1]:.3g}, {want[2]:.3g}]"
    else:
      text = f"{want[0]:+.3f} [{want[1]:+.3f}, {want[2]:+.3f}]"
    kind = "ratio" if log else "difference"
    row = f"| batchnorm vs none | {metric} ({kind}) | lr={lr:g} | {text} | 5 |"
    assert row in md, row
    found = [e for e in effects if e.cell == (("lr", lr),)]
    assert found  # once per question that states it
    for e in found:
      np.testing.assert_allclose(e.shown(), want, rtol=1e-6)


def test_default_study_has_an_effect_that_excludes_zero(default_study):
  workdir, md = default_study
  ds = analysis.load(workdir)
  effects = [e for s in report.sections(ds, study_info.read(workdir)) for e in s.effects]
  assert any(e.interval.sign != 0 for e in effects)
  # Batch norm lowers the early training loss at both learning rates, clearly.
  early = [e for e in effects
           if e.contrast == "batchnorm vs none" and e.metric.key == "early_loss"]
  assert {e.cell for e in early} == {(("lr", 0.1),), (("lr", 0.5),)}  # Q1 and Q4 state it
  for e in early:
    assert e.interval.sign == -1 and e.verdict == "lower" and e.shown()[2] < 1
  assert "smoke-scale study" in md and "fewer than 5!" not in md


def _relabel(ds, mapping):
  levels = list(ds.indexes["model"].names)
  flat = ds.reset_index("model")
  variants = [mapping.get(v, v) for v in flat.variant.values.tolist()]
  return flat.assign_coords(variant=("model", variants)).set_index(model=levels)


def _sentence(text, start):
  """The sentence of `text` that begins with `start`."""
  return next(s for s in re.split(r"(?<=\.) ", text) if s.startswith(start))


def test_swapping_two_variants_labels_swaps_the_answers(default_study):
  workdir, _ = default_study
  ds, info = analysis.load(workdir), study_info.read(workdir)
  swapped = _relabel(ds, {"none": "batchnorm", "batchnorm": "none"})
  before = {s.number: s for s in report.sections(ds, info)}
  after = {s.number: s for s in report.sections(swapped, info)}
  flip = {"lower": "higher", "higher": "lower", "inconclusive": "inconclusive"}
  for q in (1, 4):
    pairs = [(a, b) for a, b in zip(before[q].effects, after[q].effects)
             if a.contrast == "batchnorm vs none"]
    assert pairs and all(a.metric == b.metric and a.cell == b.cell for a, b in pairs)
    for a, b in pairs:
      assert b.verdict == flip[a.verdict]
      np.testing.assert_allclose(b.interval.mean, -a.interval.mean, rtol=1e-9)
  start = "`batchnorm` vs `none`:"
  assert "early training loss lower" in _sentence(before[4].headline, start)
  assert "early training loss higher" in _sentence(after[4].headline, start)
  assert "increases ICS by the gradient definition" in _sentence(before[1].headline, start)
  assert "reduces ICS by the gradient definition" in _sentence(after[1].headline, start)
  assert before[2].headline != after[2].headline  # noisy BN now faces the no-norm models


def test_files_are_written_and_the_html_stands_alone(default_study):
  workdir, md = default_study
  folder = workdir / "report"
  images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
  assert set(images) == {"curves.png", "lr_sensitivity.png", "percentiles.png", "grad_ics.png",
                         "ratio_over_time.png", "propagation.png"}
  for name in images:
    assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  html = (folder / "report.html").read_text(encoding="utf-8")
  sources = re.findall(r'src="([^"]*)"', html)
  assert len(sources) == len(images)
  embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources
              if s.startswith("data:image/png;base64,")}
  assert embedded == {(folder / name).read_bytes() for name in images}
  for external in ("http://", "https://", "<link", "<script", "url("):
    assert external not in html
  for q in range(1, 6):
    assert f"<h2>Q{q}." in html and f"## Q{q}." in md


def test_a_workdir_with_only_some_probes_or_none(default_study, depth_study):
  _, md = default_study  # gradient-ICS only
  assert "its probe was off (`landscape_every=0`)" in md
  assert "its probe was off (`curvature_every=0`)" in md
  assert "| batchnorm vs none | gradient-ICS" in md
  assert "gradient change along the update (ratio)" not in md
  _, md = depth_study  # no probe at all
  for probe in ("ics_every", "landscape_every", "curvature_every"):
    assert f"its probe was off (`{probe}=0`)" in md
  assert "| layernorm vs none | drift of the median nonlinearity input (difference) |" in md
  assert "percentiles.png" in md and "grad_ics.png" not in md


def test_other_variant_names_depth_and_few_seeds(depth_study):
  workdir, md = depth_study
  ds = analysis.load(workdir)
  secs = {s.number: s for s in report.sections(ds, study_info.read(workdir))}
  assert {e.contrast for e in secs[1].effects} == {"layernorm vs none"}
  assert secs[2].headline.startswith("Not measured")
  assert "No batch-norm variant" in secs[5].headline
  assert "only 2 seed indices" in md and "(fewer than 5!)" in md
  # Depth: each variant's drift at depth 2 against depth 1, paired by seed index.
  deep, shallow = (_per_seed(_group(workdir, variant="none", depth=k), _drift, lr=0.1)
                   for k in (2, 1))
  mean, low, high = _t_interval([deep[s] - shallow[s] for s in (0, 1)])
  drift = next(e for e in secs[3].effects if e.contrast == "none: depth 2 vs 1"
               and e.metric.key == "median_drift")
  np.testing.assert_allclose(drift.shown(), (mean, low, high), rtol=1e-6)
  assert any(e.contrast == "(layernorm vs none) at depth 2 vs 1" for e in secs[3].effects)


def test_a_single_variant_from_the_command_line(tmp_path, capsys):
  c = tiny_config(landscape_every=10, curvature_every=20)  # batchnorm only
  c.sweep.lr = (0.1,)
  if "test_time_every" in c:
    c.test_time_every = 0
  runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  assert report_main.main([str(tmp_path / "w"), "--out", str(tmp_path / "out")]) == 0
  assert "report.md" in capsys.readouterr().out
  md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
  assert "| batchnorm vs" not in md and "Only one learning rate was run" in md
  for figure in ("curves", "percentiles", "landscape", "curvature"):
    assert f"]({figure}.png)" in md and (tmp_path / "out" / f"{figure}.png").exists()
  ds = analysis.load(tmp_path / "w")
  secs = report.sections(ds, study_info.read(tmp_path / "w"))
  assert [s.number for s in secs if s.headline.startswith("Only one variant")] == [1, 4]
  assert all(not s.effects for s in secs if s.number != 5)


# --- question 5 from the test-time records

@pytest.fixture(scope="module")
def test_time_study(tmp_path_factory):
  """none and batchnorm, 4 seeds, two momenta, the test-time evaluation on (test batch 1
  and adaptation on n = 1 with N = 0 are undefined for the dense batch norm)."""
  c = tiny_config(test_time_every=20, adapt_sizes=(1, 16))
  c.seeds = 4
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (0.1,)
  c.sweep.bn_momentum = (0.9, 0.99)
  workdir = tmp_path_factory.mktemp("test_time")
  runner.run(c, workdir, progress=False, log=lambda *_: None)
  md = report.write(workdir)
  return workdir, md.read_text(encoding="utf-8"), c


def _q5(workdir, ds=None):
  ds = analysis.load(workdir) if ds is None else ds
  return next(s for s in report.sections(ds, study_info.read(workdir)) if s.number == 5)


def _found(effects, label, contrast, **cell):
  return [e for e in effects if e.metric.label == label and e.contrast == contrast
          and all(dict(e.cell).get(k) == v for k, v in cell.items())]


def _by_seed(group, momentum, fn):
  """{seed: fn(model index)} for the models of a raw group at one bn_momentum."""
  return {int(group.seed.values[i]): fn(i) for i in range(group.sizes["model"])
          if np.isclose(group.bn_momentum.values[i], momentum)}


def test_q5_numbers_equal_a_direct_computation(test_time_study):
  workdir, md, c = test_time_study
  effects = _q5(workdir).effects
  bn, none = _group(workdir, variant="batchnorm"), _group(workdir, variant="none")
  modes = list(bn.stats_mode.values)
  steps = list(bn.test_time_step.values)
  sizes = list(bn.test_batch_size.values)
  acc = bn.stats_mode_accuracy.values  # model, test_time_step, stats_mode, test_batch_size
  checked = 0
  for mom in (0.9, 0.99):
    for si in (0, len(steps) - 1):
      for bi, b in enumerate(sizes):
        gap = _by_seed(bn, mom, lambda i: acc[i, si, modes.index("running"), bi]
                       - acc[i, si, modes.index("batch"), bi])
        found = _found(effects, "test accuracy, running minus batch statistics", "batchnorm",
                       bn_momentum=mom, step=steps[si], **{"test batch": b})
        if b == 1:  # a dense unit normalised over one element: undefined, no number
          assert not found
          continue
        assert sorted(gap) == [0, 1, 2, 3] and len(found) == 1
        np.testing.assert_allclose(found[0].shown(), _t_interval(list(gap.values())),
                                   rtol=1e-5, atol=1e-7)
        checked += 1
      pop = _by_seed(bn, mom, lambda i: acc[i, si, modes.index("population"), -1]
                     - acc[i, si, modes.index("running"), -1])
      (e,) = _found(effects, "test accuracy, population minus running statistics",
                    "batchnorm", bn_momentum=mom, step=steps[si])
      np.testing.assert_allclose(e.shown(), _t_interval(list(pop.values())), rtol=1e-5,
                                 atol=1e-7)
  assert checked == 8
  # Shift: clean minus shifted at the highest severity, last step, no adaptation.
  corr = list(bn.corruption.values)
  adapt, ns, priors = list(bn.adapt.values), list(bn.adapt_n.values), list(bn.adapt_prior.values)
  sev = int(np.argmax(bn.severity.values))

  def shifted(group, kind, ci, n=0, p=0):
    return group.shift_accuracy.values[:, -1, ci, sev, adapt.index(kind), n, p]

  for mom in (0.9, 0.99):
    for ci, name in enumerate(corr):
      if name == "clean":
        continue
      drop = {v: _by_seed(g, mom, lambda i, g=g: shifted(g, "none", 0)[i]
                          - shifted(g, "none", ci)[i]) for v, g in (("bn", bn), ("none", none))}
      for contrast, d in (("batchnorm", list(drop["bn"].values())),
                          ("batchnorm vs none", [drop["bn"][s] - drop["none"][s]
                                                 for s in sorted(drop["bn"])])):
        (e,) = _found(effects, "accuracy lost under shift", contrast, bn_momentum=mom,
                      corruption=name)
        np.testing.assert_allclose(e.shown(), _t_interval(d), rtol=1e-5, atol=1e-7)
      for ni, n in enumerate(ns):
        for pi, p in enumerate(priors):
          found = _found(effects, "accuracy gained by BN adaptation", "batchnorm",
                         bn_momentum=mom, corruption=name, n=n, N=p)
          if n == 1 and p == 0:  # a variance of one element per unit: undefined
            assert not bool(bn.shift_defined.values[adapt.index("full"), ni, pi])
            assert not found
            continue
          gain = _by_seed(bn, mom, lambda i: shifted(bn, "full", ci, ni, pi)[i]
                          - shifted(bn, "none", ci)[i])
          assert len(found) == 1
          np.testing.assert_allclose(found[0].shown(), _t_interval(list(gain.values())),
                                     rtol=1e-5, atol=1e-7)
  e = _found(effects, "accuracy lost under shift", "batchnorm vs none", bn_momentum=0.9,
             corruption="contrast")[0]
  assert f"| batchnorm vs none | accuracy lost under shift (difference) | " \
         f"lr=0.1, bn_momentum=0.9, corruption=contrast | {e.text()} | 4 (fewer than 5!) |" in md


def test_q5_undefined_entries_enter_no_number(test_time_study):
  """Undefined entries hold -1; any other fill leaves every Q5 effect as it was."""
  workdir, md, _ = test_time_study
  ds = analysis.load(workdir)
  poisoned = ds.copy(deep=True)
  for var, mask in (("stats_mode_accuracy", "stats_mode_defined"),
                    ("shift_accuracy", "shift_defined")):
    undefined = ~ds[mask].broadcast_like(ds[var]).transpose(*ds[var].dims).values
    assert undefined.any() and (ds[var].values[undefined] == -1).all()
    poisoned[var].values[undefined] = 1e6  # in place: the copy's own array
  before, after = _q5(workdir, ds), _q5(workdir, poisoned)
  assert len(before.effects) == len(after.effects) > 0
  for a, b in zip(before.effects, after.effects):
    assert a.cell == b.cell and a.interval.n == b.interval.n
    np.testing.assert_allclose(a.shown(), b.shown(), rtol=1e-12)
  assert before.headline == after.headline
  assert all(abs(x) <= 1 for e in before.effects for x in e.shown() if math.isfinite(x))


def test_q5_answer_figures_and_words(test_time_study):
  workdir, md, _ = test_time_study
  sec = _q5(workdir)
  for figure in ("test_time_modes", "shift_adaptation"):
    assert f"]({figure}.png)" in md and (workdir / "report" / f"{figure}.png").exists()
  assert "Only partly answered" not in md and "undefined" in md
  assert "`none` normalises nothing over the batch" in md
  # The answer's words follow the verdicts of the running-vs-batch effects.
  gap = [e for e in sec.effects if e.metric.key == "running_vs_batch"]
  words = {"lower": "lower (running statistics worse)",
           "higher": "higher (running statistics better)", "inconclusive": "inconclusive"}
  verdicts = {e.verdict for e in gap}
  for v in verdicts:
    assert words[v] in sec.headline
  for v in set(words) - verdicts:
    assert words[v] not in sec.headline.split("Under shift")[0]


def test_q5_without_test_time_records_says_how_to_record(depth_study):
  _, md = depth_study
  assert "--config.test_time_every=500" in md


def test_q5_with_part_of_the_test_time_records(test_time_study):
  workdir, _, _ = test_time_study
  ds = analysis.load(workdir)
  no_shift = _q5(workdir, ds.drop_vars(["shift_accuracy", "shift_loss"]))
  assert no_shift.effects and "Shift and adaptation were not measured" in no_shift.headline
  assert {e.metric.key for e in no_shift.effects} == {"running_vs_batch",
                                                      "population_vs_running"}
  only_none = _q5(workdir, ds.isel(model=np.flatnonzero(ds.variant.values == "none")))
  assert only_none.headline.startswith("No batch-norm variant")
  assert {e.metric.key for e in only_none.effects} == {"shift_drop"}
  fallback = _q5(workdir, ds.drop_vars(["stats_mode_accuracy", "stats_mode_loss"]))
  assert "Only partly answered" in fallback.headline
