"""The default study, at smoke size, through the command line: it writes its
records, report and summary; the report answers all five questions; its deep
network without a norm fails to train and question 3 says so. And a study with
another initialisation says what batch norm adds beyond it."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from icsjax import analysis
from icsjax import report
from icsjax import store
from icsjax import summary
from icsjax.report import effects as fx
from icsjax.report import figures
from icsjax.report import study_info

# One worker runs the smoke study once and reads it in every test (pytest -n).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("default_smoke")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The default study at smoke size: its own norms, depths 3 and 6 (its 8 would
# compile its three groups a third longer, and 6 fails the same way), one learning
# rate, two seeds, small probes.
# Sigmoid MLPs at the default (LeCun) initialisation: the signal fades through six
# sigmoid layers, so the deep network without a norm stays at chance, while batch
# norm restores each layer's scale.
# The landscape probe and the test-time evaluation are off: no primary effect reads
# them (question 5 then answers from the two evaluations every run makes), and
# compiling them for six groups would double the test's time.
SMOKE = ["--config.width=16", "--config.batch_size=32", "--config.monitor_size=64",
         "--config.tracked_units=(0,1)", "--config.seeds=2", "--config.steps=200",
         "--config.segment_steps=200", "--config.record_every=100",
         "--config.eval_every=100", "--config.ics_every=100", "--config.landscape_every=0",
         "--config.curvature_every=100", "--config.curvature_batch_size=64",
         "--config.lanczos_steps=6", "--config.layer_lanczos_steps=3",
         "--config.hutchinson_samples=1", "--config.test_time_every=0",
         "--config.sweep.lr=(0.5,)", "--config.sweep.depth=(3,6)"]


@pytest.fixture(scope="module")
def default_smoke(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("default") / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  proc = subprocess.run(
      [sys.executable, "-m", "icsjax.main", "--config=configs/default.py",
       f"--workdir={workdir}", "--progress=false", *SMOKE],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (workdir.parent / "stdout.txt").write_text(proc.stdout)
  (workdir.parent / "stderr.txt").write_text(proc.stderr)
  return workdir


def test_the_command_line_writes_records_report_and_summary(default_smoke):
  workdir = default_smoke
  stdout = (workdir.parent / "stdout.txt").read_text()
  stderr = (workdir.parent / "stderr.txt").read_text()
  # No INFO lines (orbax logs each checkpoint save), which would bury the progress bar.
  info = re.search(r"I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*", stderr)
  assert info is None, info.group(0)
  # The report follows the run (tests/test_report.py checks what it says).
  assert f"report: {workdir / 'report' / 'report.md'}" in stdout
  assert (workdir / "report" / "report.html").exists()
  groups = store.load(workdir)
  norms = ("none", "batchnorm", "noisy_batchnorm")
  assert list(groups) == [f"depth-{d}_norm-{n}" for d in (3, 6) for n in norms]
  assert json.loads((workdir / "grid.json").read_text())["num_models"] == 12
  for name, ds in groups.items():
    depth = int(name.split("_")[0].split("-")[1])
    assert ds.sizes == {"model": 2, "step": 200, "record_step": 3, "eval_step": 3,
                        "layer": depth, "unit": 16, "tracked_unit": 2, "quantile": 3,
                        "ics_step": 2, "curvature_step": 2, "weight_layer": depth + 1,
                        "slq_vector": 1, "lanczos_step": 6}, name
    assert np.isfinite(ds.train_loss).all() and (ds.diverged_step == 0).all()
    for v in ("ics_grad_diff_relative", "hessian_lambda_max", "hessian_trace",
              "eos_threshold"):
      assert np.isfinite(ds[v]).all(), (name, v)
    assert (ds.hessian_lambda_max >= ds.hessian_lambda_min).all()
  # Batch norm learns the digits within 200 steps at lr 0.5 (chance is 0.1).
  bn = groups["depth-3_norm-batchnorm"]
  assert float(bn.test_accuracy_eval_mode.isel(eval_step=-1).min()) > 0.8
  # The printed summary is the one computed from the stored arrays.
  table = summary.format_table(summary.rows(groups, 100))  # eval_every
  assert table in stdout
  assert (workdir / "summary.txt").read_text().strip() == table.strip()
  none = groups["depth-3_norm-none"].test_accuracy_eval_mode.isel(eval_step=-1).values
  none = none.astype(np.float64)  # the summary averages in float64
  assert f"{none.mean():.4f} ± {none.std():.4f}" in table


def test_the_default_study_answers_every_question(default_smoke):
  ds = analysis.load(default_smoke)
  secs = report.sections(ds, study_info.read(default_smoke))
  for s in secs:
    for unanswered in ("Not measured", "not measured", "could not be estimated",
                       "Only partly answered"):
      assert unanswered not in s.glance, (s.number, s.glance)
  assert all(any(e.primary for e in s.effects) for s in secs)


@pytest.mark.parametrize("draw", figures.ALL, ids=lambda f: f.__name__)
def test_the_figures_of_a_depth_sweep_keep_their_text_apart(default_smoke, draw, tmp_path,
                                                           monkeypatch):
  from test_figure_text import text_problems
  saved = []
  save = figures._save
  monkeypatch.setattr(figures, "_save", lambda fig, folder, name: saved.append(fig) or
                      save(fig, folder, name))
  if draw(analysis.load(default_smoke), tmp_path) is None:
    pytest.skip(f"{draw.__name__}: not drawn here (one learning rate, no landscape or "
                f"test-time records): tests/test_figure_text.py draws it")
  (fig,) = saved
  assert text_problems(fig) == []


def test_the_deep_network_without_a_norm_fails_and_question_3_says_so(default_smoke):
  ds = analysis.load(default_smoke)
  failed = lambda v, d: fx.select(ds, v, (("depth", d),))["failed"].values
  assert failed("none", 6).all() and not failed("none", 3).any()
  assert not failed("batchnorm", 6).any()
  secs = {s.number: s for s in report.sections(ds, study_info.read(default_smoke))}
  q3 = secs[3]
  assert "At depth 6, `none` trained in 0/2 models, `batchnorm` trained in 2/2" in q3.glance
  assert "Not measured" not in q3.headline
  md = (default_smoke / "report" / "report.md").read_text(encoding="utf-8")
  assert "At depth 6, lr 0.5: `none` trained in 0/2 seeds" in md
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
