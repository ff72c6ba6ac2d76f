"""Checkpoints: a killed run resumes to records bitwise identical to an
uninterrupted one; damaged checkpoints are passed over; a checkpoint restores
on another device count; load_model gives back a model as it was trained."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from icsjax import analysis
from icsjax.analysis import surfaces
from icsjax import checkpoint as checkpoint_lib
from icsjax import faults
from icsjax import runner
from icsjax import store

# Every test here compares against one reference run (a module fixture), and the
# crash tests take tens of seconds each: one worker runs them all (pytest -n) and
# computes the reference once, and they start first.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("checkpoint_reference")]

TESTS = os.path.dirname(os.path.abspath(__file__))
GROUPS = ("norm-none", "norm-batchnorm")
SEGMENT, STEPS = 20, 80
# The worker process: the same study, with the tests' compile settings (conftest).
WORKER = (f"import sys; sys.path[:0] = [{ROOT!r}, {TESTS!r}]; import test_checkpoint as t; "
          f"import jax; print('devices', jax.local_device_count(), flush=True); "
          f"t.run_study(sys.argv[1])")


def study_config():
  """Two groups (the checkpoint holds both), 3 seeds (padding on 2 or 4 devices),
  four segments with a checkpoint after each."""
  c = tiny_config(steps=STEPS, segment_steps=SEGMENT, seeds=3, checkpoint_segments=1)
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (0.1,)
  return c


def run_study(workdir, log=lambda *_: None):
  return runner.run(study_config(), workdir, progress=False, log=log)


def start_worker(workdir, kill_at: str = "", devices: int = 1) -> subprocess.Popen:
  env = dict(os.environ, **{faults.ENV: kill_at})
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.Popen([sys.executable, "-c", WORKER, str(workdir)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def records(workdir) -> dict:
  """Every stored array of every group, segment files concatenated."""
  return {g: store.load_arrays(workdir, g)[0] for g in GROUPS}


def state_checksums(workdir) -> dict:
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as ckpts:
    return {s: ckpts.read_meta(s)["checksums"] for s in ckpts.steps()}


def checkpoint_steps(workdir) -> list[int]:
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as ckpts:
    return ckpts.steps()


def assert_bitwise_equal(got: dict, want: dict):
  assert got.keys() == want.keys()
  for g in want:
    assert got[g].keys() == want[g].keys(), g
    for name, a in want[g].items():
      np.testing.assert_array_equal(got[g][name], a, err_msg=f"{g}/{name}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run: its records and the checksums of its checkpoints."""
  workdir = tmp_path_factory.mktemp("reference")
  run_study(workdir)
  return workdir, records(workdir), state_checksums(workdir)


def test_an_uninterrupted_run_checkpoints_every_segment(reference):
  workdir, _, sums = reference
  assert sorted(sums) == [20, 40, 60, 80]
  assert all(set(s) == set(GROUPS) for s in sums.values())
  assert len({s["norm-batchnorm"] for s in sums.values()}) == 4  # the state moved on
  for g in GROUPS:  # step 0 (the initial state) leads the records the resumes must match
    arrays = reference[1][g]
    assert arrays["record_step"][0] == 0 and arrays["eval_step"][0] == 0
    assert arrays["preact_mean"].shape[1] == len(arrays["record_step"]) == STEPS // 10 + 1


# Saves are asynchronous, and each waits for the one before: at a kill, every
# save before the last one started is complete; the last may be or not.
@pytest.mark.parametrize("kill_at, leftover, resumed", [
    ("after_segment:1", "first segment only", "from step 0"),  # its step 0 computed again
    ("record_write:3", "half-written record file", "(from step 0|at step 20)"),  # seg 1
    ("checkpoint_save:2", "checkpoint mid-save", "at step 20"),  # step 40 being written
    ("after_segment:3", "records ahead of checkpoint", "at step (20|40)"),  # 60 not saved
])
def test_a_killed_run_resumes_to_bitwise_identical_records(reference, tmp_path, kill_at,
                                                            leftover, resumed):
  _, want, want_sums = reference
  workdir = tmp_path / "w"
  worker = start_worker(workdir, kill_at)
  _, err = worker.communicate(timeout=300)
  assert worker.returncode == -signal.SIGKILL, err[-2000:]
  if leftover == "half-written record file":
    assert list((workdir / store.RECORDS / "norm-none").glob("*.tmp"))
  if leftover == "checkpoint mid-save":
    assert 40 not in checkpoint_steps(workdir)
  if leftover == "records ahead of checkpoint":
    assert store.complete_segments(workdir, "norm-none") == 3
  if leftover == "first segment only":
    assert store.complete_segments(workdir, "norm-none") == 1 and not checkpoint_steps(workdir)
  log = []
  run_study(workdir, log.append)
  assert any(re.search(f"(resuming|rerunning) it {resumed}", m) for m in log), log
  assert_bitwise_equal(records(workdir), want)
  assert state_checksums(workdir) == want_sums
  assert not list(workdir.rglob("*.tmp"))


def test_runs_killed_at_random_points_resume_to_bitwise_identical_records(reference, tmp_path):
  _, want, want_sums = reference
  workdir = tmp_path / "w"
  rng = np.random.default_rng(7)
  for _ in range(2):
    # Wait for a random amount of written work, then a random moment more.
    target = int(rng.integers(1, 2 * STEPS // SEGMENT))
    worker = start_worker(workdir)
    deadline = time.monotonic() + 120
    while worker.poll() is None and time.monotonic() < deadline:
      done = sum(len(store.segment_paths(workdir, g)) for g in GROUPS) \
          if (workdir / store.RECORDS).exists() else 0
      if done >= target:
        break
      time.sleep(0.01)
    time.sleep(float(rng.uniform(0, 0.3)))
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=60)
  run_study(workdir)
  assert_bitwise_equal(records(workdir), want)
  assert state_checksums(workdir) == want_sums


def damage_truncate_state(step_dir):
  files = sorted((p for p in (step_dir / "norm-batchnorm").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  with open(files[-1], "r+b") as f:
    f.truncate(files[-1].stat().st_size // 2)


def damage_delete_metadata(step_dir):
  shutil.rmtree(step_dir / checkpoint_lib.META)


def damage_flip_state_bytes(step_dir):
  biggest = max((p for p in (step_dir / "norm-none").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  data = bytearray(biggest.read_bytes())
  data[len(data) // 2] ^= 0xFF
  biggest.write_bytes(bytes(data))


def resume_a_copy(reference, tmp_path, prepare=lambda workdir: None) -> list[str]:
  """Copies the reference workdir, lets `prepare` damage it, reruns it and checks
  that the records and checkpoints come out bitwise the reference's; the log."""
  src, want, want_sums = reference
  workdir = tmp_path / "w"
  shutil.copytree(src, workdir)
  prepare(workdir)
  log = []
  run_study(workdir, log.append)
  assert_bitwise_equal(records(workdir), want)
  assert state_checksums(workdir) == want_sums
  return log


@pytest.mark.parametrize("damage", [damage_truncate_state, damage_delete_metadata,
                                    damage_flip_state_bytes])
def test_a_damaged_checkpoint_is_passed_over_for_the_one_before(reference, tmp_path, damage):
  def prepare(workdir):
    store.truncate(workdir, "norm-batchnorm", 3)  # lost the last segment: must rerun it
    damage(workdir / checkpoint_lib.CHECKPOINTS / "60")
  log = resume_a_copy(reference, tmp_path, prepare)
  assert any("checkpoints/60 is damaged" in m and "falling back" in m for m in log), log
  assert any("resuming it at step 40" in m for m in log), log


def test_a_finished_run_rerun_changes_nothing(reference, tmp_path):
  log = resume_a_copy(reference, tmp_path)
  assert any("resuming it at step 80" in m for m in log), log


def test_a_rerun_may_change_how_the_run_is_kept_but_not_what_it_computes(reference,
                                                                       tmp_path):
  """A relaunch with a longer preemption budget and fewer checkpoints kept is the
  same study and resumes; one with another learning rate is refused."""
  src, want, _ = reference
  workdir = tmp_path / "w"
  shutil.copytree(src, workdir)
  store.truncate(workdir, "norm-none", 3)  # the last segment to train again
  kept = study_config()
  kept.preemption_budget_seconds, kept.checkpoint_keep = 25.0, 2
  log = []
  runner.run(kept, workdir, progress=False, log=log.append)
  assert any("resuming it at step 60" in m for m in log), log
  assert_bitwise_equal(records(workdir), want)
  other = study_config()
  other.sweep.lr = (0.2,)
  with pytest.raises(FileExistsError, match="different config"):
    runner.run(other, workdir, progress=False, log=lambda *_: None)


def test_a_checkpoint_saved_over_4_devices_restores_on_1(reference, tmp_path):
  _, want, _ = reference
  workdir = tmp_path / "w"
  worker = start_worker(workdir, "checkpoint_save:3", devices=4)  # steps 20, 40 complete
  out, err = worker.communicate(timeout=300)
  assert worker.returncode == -signal.SIGKILL, err[-2000:]
  assert "devices 4" in out
  assert checkpoint_steps(workdir)[:2] == [20, 40]
  # This process has one device: the state of 3 models per group, saved by a
  # run that spread them (with a padding copy) over several, continues here.
  log = []
  run_study(workdir, log.append)
  assert any(re.search("resuming it at step (40|60)", m) for m in log), log
  got = records(workdir)
  for g in GROUPS:
    for name, a in want[g].items():
      if a.dtype.kind == "U":  # the failure reasons
        np.testing.assert_array_equal(got[g][name], a, err_msg=f"{g}/{name}")
      else:
        np.testing.assert_allclose(got[g][name], a, rtol=2e-5, atol=1e-6,
                                   err_msg=f"{g}/{name}")


def test_load_model_reproduces_the_logged_test_accuracy(reference):
  workdir = reference[0]
  ds = analysis.load(workdir)
  for step in (40, 80):
    for variant, seed in (("none", 0), ("batchnorm", 2)):
      m = analysis.load_model(workdir, step=step, variant=variant, seed=seed)
      assert m.step == step and m.labels == {"variant": variant, "seed": seed, "lr": 0.1}
      data = m.dataset()
      n = (data.num_test // 16) * 16  # the evaluated examples: whole batches of 16
      acc = float(jnp.mean(jnp.argmax(m.apply(data.test_x[:n]), -1) == data.test_y[:n]))
      logged = ds.test_accuracy_eval_mode.sel(variant=variant, seed=seed, eval_step=step)
      assert acc == pytest.approx(float(logged.squeeze()), abs=1e-6)
  latest = analysis.load_model(workdir, variant="batchnorm", seed=2)
  assert latest.step == 80
  # Interpolating from the step-40 checkpoint's weights to the latest's ends on
  # the latest model's logged test loss (its running statistics held fixed).
  earlier = analysis.load_model(workdir, step=40, variant="batchnorm", seed=2)
  data = latest.dataset()
  n = (data.num_test // 16) * 16
  losses = surfaces.interpolate(latest.eval_loss(data.test_x[:n], data.test_y[:n]),
                                earlier.variables["params"], latest.variables["params"],
                                jnp.array([0.0, 1.0]))
  logged = ds.test_loss_eval_mode.sel(variant="batchnorm", seed=2, eval_step=80)
  assert float(losses[1]) == pytest.approx(float(logged.squeeze()), rel=1e-5)
  assert float(losses[0]) != pytest.approx(float(losses[1]), rel=1e-3)
  with pytest.raises(ValueError, match="3 models match"):
    analysis.load_model(workdir, variant="batchnorm")
  with pytest.raises(ValueError, match="'width' is not a label"):
    analysis.load_model(workdir, width=8, seed=0)
  with pytest.raises(ValueError, match=r"step=30 has no checkpoint.*\[20, 40, 60, 80\]"):
    analysis.load_model(workdir, step=30, variant="none", seed=0)
