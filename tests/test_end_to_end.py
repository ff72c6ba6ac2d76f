"""The default study, shortened, through the command line."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from icsjax import store
from icsjax import summary


@pytest.mark.slow
def test_default_study_from_the_command_line(tmp_path):
  workdir = tmp_path / "default"
  cmd = [sys.executable, "-m", "icsjax.main", "--config=configs/default.py",
         f"--workdir={workdir}", "--config.steps=250", "--config.segment_steps=250",
         "--config.seeds=2", "--config.record_every=50",
         "--config.curvature_every=250", "--config.test_time_every=250",
         # depth 8: tests/test_answers.py; noisy BN with every record kind but
         # curvature: tests/test_readme.py
         "--config.sweep.depth=(3,)", "--config.sweep.norm=(none,batchnorm)", "--noprogress"]
  # Compilation dominates one segment: XLA optimisations off, as in conftest.
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  # No INFO lines (orbax logs each checkpoint save), which would bury the progress bar.
  info = re.search(r"I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*", out.stderr)
  assert info is None, info.group(0)
  # The report follows the run (tests/test_report.py checks what it says).
  assert f"report: {workdir / 'report' / 'report.md'}" in out.stdout
  assert (workdir / "report" / "report.html").exists()
  groups = store.load(workdir)
  assert list(groups) == ["depth-3_norm-none", "depth-3_norm-batchnorm"]
  grid = json.loads((workdir / "grid.json").read_text())
  assert grid["num_models"] == 8
  for ds in groups.values():
    assert ds.sizes == {"model": 4, "step": 250, "record_step": 6, "eval_step": 2, "layer": 3,
                        "unit": 100, "tracked_unit": 3, "quantile": 3, "ics_step": 1,
                        "landscape_step": 1, "curvature_step": 1, "weight_layer": 4,
                        "lr_multiple": 4, "slq_vector": 1, "lanczos_step": 20,
                        "test_time_step": 1, "stats_mode": 3, "test_batch_size": 3,
                        "corruption": 5, "severity": 2, "adapt": 4, "adapt_n": 1,
                        "adapt_prior": 2}
    assert np.isfinite(ds.train_loss).all() and (ds.diverged_step == 0).all()
    for name in ("ics_grad_diff_relative", "landscape_beta_smoothness", "hessian_lambda_max",
                 "hessian_trace", "eos_threshold"):
      assert np.isfinite(ds[name]).all(), name
    assert (ds.hessian_lambda_max >= ds.hessian_lambda_min).all()
    for name, defined in (("stats_mode_accuracy", ds.stats_mode_defined),
                          ("shift_accuracy", ds.shift_defined)):  # test time (issue 7)
      v = ds[name]
      assert ((v >= 0) & (v <= 1)).where(defined, v == -1.0).all(), name
  # Batch norm learns the digits within 250 steps at lr 0.5 (chance is 0.1).
  bn = groups["depth-3_norm-batchnorm"]
  assert float(bn.test_accuracy_eval_mode.isel(eval_step=-1).where(bn.lr == 0.5).max()) > 0.9
  # The printed summary is the one computed from the stored arrays.
  table = summary.format_table(summary.rows(groups, 250))
  assert table in out.stdout
  assert (workdir / "summary.txt").read_text().strip() == table.strip()
  none_05 = groups["depth-3_norm-none"].test_accuracy_eval_mode.isel(eval_step=-1).values[2:]
  none_05 = none_05.astype(np.float64)  # the summary averages in float64
  assert f"{none_05.mean():.4f} ± {none_05.std():.4f}" in table.splitlines()[3]
