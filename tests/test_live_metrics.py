"""Live metrics (icsjax.live_metrics): the TensorBoard event files of a tiny study,
read back with TensorBoard's own reader, hold every value the records give,
averaged over seeds here by hand; a killed and resumed run's read back the same."""

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import ROOT, tiny_config
from icsjax import analysis
from icsjax import faults
from icsjax import live_metrics
from icsjax import runner
from icsjax import store

SEGMENT, STEPS, EVAL_EVERY, PROBE_EVERY = 20, 60, 10, 20
LRS, SEEDS = (0.1, 0.4), 2
TESTS = os.path.dirname(os.path.abspath(__file__))
WORKER = (f"import sys; sys.path[:0] = [{ROOT!r}, {TESTS!r}]; import test_live_metrics as t; "
          f"t.run_study(sys.argv[1])")


def study_config():
  """Two learning rates, two seeds, every probe once a segment, three segments
  with a checkpoint after each."""
  c = tiny_config(steps=STEPS, seeds=SEEDS, segment_steps=SEGMENT, eval_every=EVAL_EVERY,
                  checkpoint_segments=1, ics_every=PROBE_EVERY, landscape_every=PROBE_EVERY,
                  curvature_every=PROBE_EVERY, curvature_batch_size=16, lanczos_steps=4,
                  layer_lanczos_steps=3, slq_vectors=1, hutchinson_samples=2)
  c.sweep.norm = ("batchnorm",)
  c.sweep.lr = LRS
  return c


def run_study(workdir, log=lambda *_: None):
  runner.run(study_config(), workdir, progress=False, log=log)


def read_events(workdir, group) -> dict:
  """{tag: [(step, value)]} as TensorBoard shows them (restart markers applied)."""
  acc = event_accumulator.EventAccumulator(live_metrics.group_directory(workdir, group),
                                           size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("live") / "w"
  started = time.perf_counter()
  run_study(workdir)
  seconds = time.perf_counter() - started
  return workdir, {g: read_events(workdir, g) for g in groups(workdir)}, seconds


def groups(workdir) -> list[str]:
  return [g["name"] for g in store.read_json(workdir / "grid.json")["groups"]]


def finite_mean(values):
  kept = [v for v in values if math.isfinite(v)]
  return sum(kept) / len(kept) if kept else None


def expected(workdir) -> dict:
  """{group: {tag: [(step, value)]}} from the records, by hand: every cell's
  per-model values, reduced as documented, averaged over its seeds in a loop."""
  ds = analysis.load(workdir)
  model_group, lrs = ds.group.values, ds.lr.values
  out = {}
  for g in groups(workdir):
    tags = out.setdefault(g, {})
    for lr in LRS:
      models = [m for m in range(ds.sizes["model"]) if model_group[m] == g and lrs[m] == lr]
      assert len(models) == SEEDS

      def add(name, steps, per_model):
        for t, step in enumerate(steps):
          mean = finite_mean([per_model(m, t) for m in models])
          if mean is not None:
            tags.setdefault(f"{g}/lr={lr}/{name}", []).append((int(step), mean))

      train_steps = list(ds.step.values)
      eval_steps = ds.eval_step.values
      for name in ("train_loss", "train_accuracy"):
        values = ds[name].values
        interval = lambda e: [train_steps.index(s) for s in range(e - EVAL_EVERY + 1, e + 1)]
        add(name, [e for e in eval_steps if e > 0], lambda m, t: sum(
            float(values[m, i]) for i in interval(eval_steps[eval_steps > 0][t])) / EVAL_EVERY)
      for name, var in (("test_loss", "test_loss_eval_mode"),
                        ("test_accuracy", "test_accuracy_eval_mode")):
        add(name, eval_steps, lambda m, t, v=ds[var].values: float(v[m, t]))
      ics = ds.ics_grad_diff_relative.values  # (model, ics_step, weight_layer)
      add("grad_ics", ds.ics_step.values, lambda m, t: sum(
          float(x) for x in ics[m, t, 1:]) / (ics.shape[2] - 1))
      add("beta_smoothness", ds.landscape_step.values,
          lambda m, t: float(ds.landscape_beta_smoothness.values[m, t]))
      add("lambda_max", ds.curvature_step.values,
          lambda m, t: float(ds.hessian_lambda_max.values[m, t]))
      scaled = ds.layer_sharpness_scaled.values  # the output layer is the last
      add("sharpness_scaled", ds.curvature_step.values, lambda m, t: sum(
          float(x) for x in scaled[m, t, :-1]) / (scaled.shape[2] - 1))
    # Failed models at each segment's end: that segment's stored verdict.
    g_models = [m for m in range(ds.sizes["model"]) if model_group[m] == g]
    g_lrs = [lrs[m] for m in g_models]
    for i, path in enumerate(store.segment_paths(workdir, g)):
      with np.load(path) as z:
        failed = z["failed"]
      for lr in LRS:
        count = sum(bool(failed[j]) for j in range(len(g_models)) if g_lrs[j] == lr)
        tags.setdefault(f"{g}/lr={lr}/failed", []).append(((i + 1) * SEGMENT, float(count)))
  return out


def without_throughput(tags: dict) -> dict:
  return {t: v for t, v in tags.items() if "model_steps_per_s" not in t}


def throughput_steps(tags: dict, group: str) -> tuple[list, list]:
  return ([s for s, _ in tags.get(f"{group}/{live_metrics.THROUGHPUT_COMPILING}", [])],
          [s for s, _ in tags.get(f"{group}/{live_metrics.THROUGHPUT}", [])])


def test_every_scalar_is_the_seed_mean_of_its_records(reference):
  workdir, events, _ = reference
  want = expected(workdir)
  assert len(want) == 1 and all(len(tags) == 2 * 9 for tags in want.values())
  for g, tags in want.items():
    got = without_throughput(events[g])
    assert sorted(got) == sorted(tags), g
    for tag, points in tags.items():
      assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
      np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in points],
                                 rtol=2e-6, err_msg=tag)  # stored as float32
  # The probes' steps: one a segment; the test evaluation from step 0.
  (g,) = groups(workdir)
  assert [s for s, _ in events[g][f"{g}/lr=0.1/lambda_max"]] == [20, 40, 60]
  assert [s for s, _ in events[g][f"{g}/lr=0.1/test_loss"]] == list(range(0, 61, 10))


def test_throughput_is_written_once_per_segment_and_says_when_it_compiled(reference):
  workdir, events, run_seconds = reference
  (g,) = groups(workdir)
  assert throughput_steps(events[g], g) == ([20], [40, 60])
  # Back to each segment's seconds: the model-steps over the rate.
  seconds = lambda tag: [len(LRS) * SEEDS * SEGMENT / v for _, v in events[g][f"{g}/{tag}"]]
  (compiling,) = seconds(live_metrics.THROUGHPUT_COMPILING)
  compiled = seconds(live_metrics.THROUGHPUT)
  assert 0 < sum(compiled) < compiling < run_seconds - sum(compiled)  # compiling takes longest


def test_the_seed_mean_leaves_out_what_is_not_finite():
  got = live_metrics.seed_mean(np.array([[1.0, np.nan, np.inf], [3.0, 2.0, np.nan]]))
  np.testing.assert_array_equal(got, [2.0, 2.0, np.nan])


def test_a_diverged_seed_is_left_out_and_a_step_no_seed_has_is_not_written():
  """Hand-made records of one segment (steps 21..40, evaluations at 30 and 40) of
  two cells of two seeds: seed 1 of lr=0.1 diverged at step 35, lr=0.4 entirely."""
  nan = float("nan")
  train = np.arange(4 * 20, dtype=np.float32).reshape(4, 20)
  train[1, 14:] = nan
  train[2:] = nan
  records = {"per_step": {"train_loss": train},
             "eval": {"test_loss_eval_mode": np.array([[1, 2], [3, nan], [nan, nan],
                                                       [nan, nan]], np.float32)},
             "model": {"failed": np.array([False, True, True, True])}}
  coords = {"variant": ("batchnorm",) * 4, "seed": (0, 1, 0, 1), "lr": (0.1, 0.1, 0.4, 0.4)}
  times = {"step": np.arange(21, 41), "eval_step": np.array([30, 40])}
  got = live_metrics.scalars("g", coords, records, times, 10, 40)
  assert got == [("g/lr=0.1/train_loss", 30, (sum(range(10)) + sum(range(20, 30))) / 20),
                 ("g/lr=0.1/train_loss", 40, sum(range(10, 20)) / 10),
                 ("g/lr=0.1/test_loss", 30, 2.0), ("g/lr=0.1/test_loss", 40, 2.0),
                 ("g/lr=0.1/failed", 40, 1.0), ("g/lr=0.4/failed", 40, 2.0)]


def test_a_killed_and_resumed_run_reads_back_as_the_uninterrupted_one(reference, tmp_path):
  _, want, _ = reference
  workdir = tmp_path / "w"
  # Killed after its second segment, before its checkpoint: the rerun resumes at
  # step 20 (or 0, if the save of step 20 was still in flight), and the first
  # run's events after that step are stale.
  env = dict(os.environ, **{faults.ENV: "after_segment:2"})
  killed = subprocess.run([sys.executable, "-c", WORKER, str(workdir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  first = {g: read_events(workdir, g) for g in groups(workdir)}
  assert all(throughput_steps(first[g], g) == ([20], [40]) for g in first)
  lines = []
  run_study(workdir, log=lines.append)  # the rerun
  resumed = 20 if any("resuming it at step 20" in line for line in lines) else 0
  assert resumed or any("from step 0" in line for line in lines), lines
  for g in groups(workdir):
    assert len(list(os.scandir(live_metrics.group_directory(workdir, g)))) == 2  # one a run
    got = read_events(workdir, g)
    assert without_throughput(got) == without_throughput(want[g])
    # The rerun compiled in the segment it resumed with, and its tag says so.
    compiling = sorted({20, resumed + 20})
    assert throughput_steps(got, g) == (compiling, [s for s in (40, 60) if s not in compiling])
