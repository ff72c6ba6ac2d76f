"""The report answers what a study can answer: a command-line depth sweep in which
the deep network without a norm fails to train gets a question 3 that says so."""

import os
import subprocess
import sys

import numpy as np
import pytest

from icsjax import analysis
from icsjax import report
from icsjax.report import effects as fx
from icsjax.report import study_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Sigmoid MLPs of width 16 at depth 1 and 8: at the default (LeCun) initialisation
# the signal fades through eight sigmoid layers, and the deep network without a
# norm stays at chance, while batch norm restores each layer's scale.
DEPTH_SWEEP = ["--config.width=16", "--config.batch_size=32", "--config.monitor_size=64",
               "--config.tracked_units=(0,1)", "--config.seeds=2", "--config.steps=300",
               "--config.segment_steps=300", "--config.record_every=150",
               "--config.eval_every=150", "--config.ics_every=0", "--config.landscape_every=0",
               "--config.curvature_every=0", "--config.test_time_every=0",
               "--config.sweep.norm=('none','batchnorm')", "--config.sweep.lr=(0.5,)",
               "--config.sweep.depth=(1,8)"]


@pytest.fixture(scope="module")
def depth_sweep(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("depth") / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  proc = subprocess.run(
      [sys.executable, "-m", "icsjax.main", "--config=configs/default.py",
       f"--workdir={workdir}", "--progress=false", *DEPTH_SWEEP],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_the_deep_network_without_a_norm_fails_and_question_3_says_so(depth_sweep):
  ds = analysis.load(depth_sweep)
  failed = lambda v, d: fx.select(ds, v, (("depth", d),))["failed"].values
  assert failed("none", 8).all() and not failed("none", 1).any()
  assert not failed("batchnorm", 8).any()
  secs = {s.number: s for s in report.sections(ds, study_info.read(depth_sweep))}
  q3 = secs[3]
  assert "At depth 8, `none` trained in 0/2 models, `batchnorm` trained in 2/2" in q3.glance
  assert "Not measured" not in q3.headline
  md = (depth_sweep / "report" / "report.md").read_text(encoding="utf-8")
  assert "At depth 8, lr 0.5: `none` trained in 0/2 seeds" in md
  # The primary effect of question 3 is the interaction, Holm-adjusted with the others.
  primary = [e for e in q3.effects if e.primary]
  assert primary and all(np.isfinite(e.adjusted_p) for e in primary)


def test_what_batch_norm_adds_beyond_another_initialisation(tmp_path):
  """batchnorm at the default init against none at init_gain 4, paired by seed index:
  the effect equals the log-ratios of the two models' early losses, by hand."""
  from conftest import tiny_config
  from icsjax import runner
  from icsjax.report import metrics as m
  from icsjax.report import questions
  c = tiny_config()
  c.seeds = 3
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (0.1,)
  c.sweep.init_gain = (1.0, 4.0)
  runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  ds = analysis.load(tmp_path / "w")
  sentences, effects = questions.beyond_init(ds)
  early = [e for e in effects if e.metric.key == "early_loss"]
  assert len(early) == 1 and early[0].contrast == (
      "variant=batchnorm, init_gain=1 vs variant=none, init_gain=4")
  loss = m.EARLY_LOSS.compute(ds).to_series()
  by_hand = [np.log(float(loss[("batchnorm", s, 0.1, 1.0)]) / float(loss[("none", s, 0.1, 4.0)]))
             for s in range(3)]
  np.testing.assert_allclose(early[0].interval.mean, np.mean(by_hand), rtol=1e-9)
  assert any("initialised with init_gain=4" in s for s in sentences)
