"""A study whose run stopped early reads as partial everywhere: analysis.load
says how far each group got, effects compare the steps every compared model
reached, the report's header names the steps, and a workdir with no finished
segment gives one line.

The stopped runs are a finished one with the later segment files removed:
exactly what a run killed between segments leaves (store: a segment file is
whole or absent; the runner writes segment k of every group before k+1)."""

import math
import shutil

import numpy as np
import pytest

from conftest import tiny_config
from icsjax import analysis
from icsjax import runner
from icsjax import steps_reached
from icsjax import store
from icsjax.report import __main__ as report_main
from icsjax.report import effects as fx
from icsjax.report import metrics as m
from icsjax.report import stats
from icsjax.report import study_info
import icsjax.report

pytestmark = pytest.mark.xdist_group("partial_study")  # one worker runs the study once
STEPS, SEGMENT = 40, 20
SHORT = "norm-batchnorm"


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """{"full": a finished run, "half": batchnorm stopped at step 20, "one": batchnorm
  without a finished segment, "none": no group with one}."""
  root = tmp_path_factory.mktemp("partial")
  c = tiny_config(steps=STEPS, segment_steps=SEGMENT, seeds=2, checkpoint_segments=0)
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (0.1,)
  runner.run(c, root / "full", progress=False, log=lambda *_: None)
  out = {"full": root / "full"}
  for name, cut in (("half", {SHORT: 1}), ("one", {SHORT: 0}),
                    ("none", {SHORT: 0, "norm-none": 0})):
    shutil.copytree(root / "full", root / name)
    (root / name / "summary.txt").unlink()  # a killed run never writes it
    for group, keep in cut.items():
      store.truncate(root / name, group, keep)
    out[name] = root / name
  return out


@pytest.fixture(scope="module")
def full(workdirs):
  return analysis.load(workdirs["full"])


@pytest.fixture(scope="module")
def half(workdirs):
  return analysis.load(workdirs["half"])


def test_load_says_how_far_each_group_got(full, half, workdirs):
  assert full.attrs["partial"] is False and full.attrs["steps_planned"] == STEPS
  assert (full.steps_done.values == STEPS).all()
  assert half.attrs["partial"] is True and half.attrs["steps_planned"] == STEPS
  want = np.where(half.group.values == SHORT, SEGMENT, STEPS)
  np.testing.assert_array_equal(half.steps_done.values, want)
  # The records up to the short group's step are the finished run's, bitwise.
  short = half.group.values == SHORT
  np.testing.assert_array_equal(half.train_loss.values[short][:, :SEGMENT],
                                full.train_loss.values[short][:, :SEGMENT])
  assert np.isnan(half.train_loss.values[short][:, SEGMENT:]).all()
  one = analysis.load(workdirs["one"])
  assert one.sizes["model"] == full.sizes["model"]  # the group with nothing is there
  np.testing.assert_array_equal(one.steps_done.values,
                                np.where(one.group.values == SHORT, 0, STEPS))
  assert np.isnan(one.train_loss.values[one.group.values == SHORT]).all()
  assert steps_reached.reached_text(one) == "norm-none step 40, norm-batchnorm no step"


def test_no_finished_segment_is_one_clear_line(workdirs, tmp_path, capsys):
  with pytest.raises(analysis.NoRecords, match="no finished segment yet.*before step 20"):
    analysis.load(workdirs["none"])
  assert report_main.main([str(workdirs["none"])]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "no finished segment" in err and "Traceback" not in err
  with pytest.raises(analysis.NoRecords, match="holds no icsjax study"):
    analysis.load(tmp_path)


def test_upto_cuts_every_time_axis(half):
  cut = steps_reached.upto(half, SEGMENT)
  for axis in steps_reached.time_axes(half):
    assert cut[axis].values.max() <= SEGMENT and SEGMENT in cut[axis].values, axis
  assert (cut.steps_done.values <= SEGMENT).all()
  assert steps_reached.upto(cut, SEGMENT) is cut  # nothing past the step: unchanged


def _early_loss_by_hand(ds, a, b, last):
  """Per seed, log(mean loss of a / of b) over steps t ≤ 0.1·last, in a Python loop."""
  steps = [t for t in range(1, last + 1) if t <= m.EARLY_FRACTION * last]
  out = []
  for seed in (0, 1):
    means = []
    for v in (a, b):
      i = [k for k in range(ds.sizes["model"])
           if ds.variant.values[k] == v and ds.seed.values[k] == seed][0]
      row = ds.train_loss.values[i]
      means.append(sum(row[list(ds.step.values).index(t)] for t in steps) / len(steps))
    out.append(math.log(means[0] / means[1]))
  return out


def test_effects_read_the_steps_both_models_reached(full, half):
  (e,) = fx.compare(half, m.EARLY_LOSS, "batchnorm", "none")
  want = stats.t_interval(np.array(_early_loss_by_hand(full, "batchnorm", "none", SEGMENT)))
  assert e.interval.n == 2
  np.testing.assert_allclose([e.interval.mean, e.interval.low, e.interval.high],
                             [want.mean, want.low, want.high], rtol=1e-6, atol=1e-6)
  # A final value is read at the last evaluation both reached.
  (acc,) = fx.compare(half, m.FINAL_ACCURACY, "batchnorm", "none")
  by_hand = [float(full.test_accuracy_eval_mode.sel(eval_step=SEGMENT).values[
      (full.variant.values == v) & (full.seed.values == s)][0]) for s in (0, 1)
      for v in ("batchnorm", "none")]
  diffs = np.array(by_hand[0::2]) - np.array(by_hand[1::2])
  np.testing.assert_allclose(acc.interval.mean, diffs.mean(), rtol=1e-6, atol=1e-6)
  # A complete study is read over all its steps, as before.
  (whole,) = fx.compare(full, m.EARLY_LOSS, "batchnorm", "none")
  want = stats.t_interval(np.array(_early_loss_by_hand(full, "batchnorm", "none", STEPS)))
  np.testing.assert_allclose(whole.interval.mean, want.mean, rtol=1e-6, atol=1e-6)


def test_effects_of_unshortened_models_keep_their_steps(half):
  """Within the group that finished, a within-variant effect reads all its steps."""
  none = half.isel(model=np.flatnonzero(half.variant.values == "none"))
  assert fx.common_steps(half, variant="none").step.values.max() == STEPS
  assert fx.common_steps(half, variant=["none", "batchnorm"]).step.values.max() == SEGMENT
  assert none.sizes["step"] == STEPS


def test_report_of_a_partial_study_says_so(workdirs):
  md = icsjax.report.write(workdirs["half"]).read_text()
  assert "this study is partial: of the 40 steps planned, the groups reached: norm-none " \
         "step 40, norm-batchnorm step 20" in md
  assert "read here up to step 20" in md
  assert "40 steps per model" not in md
  assert "fewer than 2" not in md and "too few seeds" not in md
  ds = study_info.readable_part(analysis.load(workdirs["half"]))
  info = study_info.read(workdirs["half"])
  for s in icsjax.report.sections(ds, info):
    for e in s.effects:
      assert e.interval.n == e.seeds == 2, (e.contrast, e.metric.key)
  one = icsjax.report.write(workdirs["one"]).read_text()
  assert "Groups with no finished segment are left out: norm-batchnorm." in one
  finished = icsjax.report.write(workdirs["full"]).read_text()
  assert "study is partial" not in finished and "40 steps per model" in finished


def test_extreme_values_read_as_numbers():
  from icsjax import summary
  from icsjax.number_text import number
  assert summary.mean_std_text(17898507019288830091018998120448.0, 2.1e30) == \
      "1.79e+31 ± 2.1e+30"
  assert summary.mean_std_text(0.61234, 0.1) == "0.6123 ± 0.1000"
  assert summary.mean_std_text(float("inf"), float("nan")) == "diverged"
  assert summary.mean_std_text(float("nan"), float("nan")) == "n/a"
  assert summary.mean_std_text(1e200, float("inf")) == "1.00e+200 (spread overflows)"
  assert number(-3e-6, "+.3f") == "-3.00e-06"  # not "-0.000"
  assert number(0.0, "+.3f") == "+0.000" and number(123.4567, ".3g") == "123"
  e = fx.Effect(m.FINAL_ACCURACY, "a vs b", (), stats.Interval(2e7, 1e7, 3e7, 2, 0.01),
                "difference", 2)
  assert e.text() == "+2.00e+07 [+1.00e+07, +3.00e+07]"
  huge = fx.Effect(m.EARLY_LOSS, "a vs b", (), stats.Interval(800.0, 790.0, 810.0, 2, 0.01),
                   "ratio", 2)
  assert huge.text() == "×inf [inf, inf]"  # a ratio beyond 1e308: no OverflowError
  none = fx.Effect(m.EARLY_LOSS, "a vs b", (), stats.Interval(math.nan, math.nan, math.nan, 0), "ratio", 2)
  assert none.text() == "n/a"
