"""A run whose workdir cannot be written stops at once, in one line: a
checkpoints or records directory made unwritable mid-run, a disk that fills
mid-run, and a filesystem with too little room from the start (refused before
compute), a summary or report that cannot be written. The earlier checkpoint
stays usable, and the same command resumes.

Each run is the command line a user types, in a subprocess, on the tiny study
of tests/test_clean_failures.py. The run stops itself (SIGSTOP, icsjax.faults)
right after its first checkpoint is on disk; the test then changes the
workdir under it and lets it go on. Root writes wherever permissions forbid
it, so as root a directory is made unwritable by a read-only bind mount, and
the full disk is a small tmpfs; where mounting is not allowed those cases are
skipped.
"""

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from icsjax import analysis
from icsjax import checkpoint as checkpoint_lib
from icsjax import faults
from icsjax import runner
from icsjax import store
from icsjax import study as study_lib
from icsjax import summary as summary_lib
from icsjax import write_errors
from conftest import tiny_config
# One group of one model, 5 segments of 20 steps, a checkpoint after each.
from test_clean_failures import GROUP, STEPS, TINY, environment, error_lines

AFTER_FIRST_CHECKPOINT = {faults.ENV: "checkpoint_saved:1:STOP"}
FIRST, SECOND = 20, 40  # the steps of the first two checkpoints (a segment is 20 steps)
OS_ERRORS = ("Read-only file system", "Permission denied")


def shared_runs(test):
  return pytest.mark.slow(pytest.mark.xdist_group("write_failures")(test))


def command(workdir, *extra):
  return [sys.executable, "-m", "icsjax.main", *TINY, f"--workdir={workdir}", "--progress=false",
          *extra]


def mount(*args):
  return subprocess.run(["mount", *args], capture_output=True, text=True).returncode == 0


@contextlib.contextmanager
def read_only(path: pathlib.Path):
  """`path` (a directory) unwritable to this user inside the block."""
  if os.geteuid() != 0:
    path.chmod(0o500)
    try:
      yield
    finally:
      path.chmod(0o755)
    return
  if not (mount("--bind", str(path), str(path))
          and mount("-o", "remount,bind,ro", str(path))):
    subprocess.run(["umount", str(path)], capture_output=True)
    pytest.skip("as root, a directory is made unwritable by a read-only bind mount, "
                "which is not allowed here")
  try:
    yield
  finally:
    subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def tmpfs(path: pathlib.Path, size: str):
  path.mkdir(parents=True)
  if os.geteuid() != 0 or not mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
    pytest.skip("a small filesystem needs a tmpfs mount (as root)")
  try:
    yield path
  finally:
    subprocess.run(["umount", str(path)], check=True)


def wait_until_stopped(proc: subprocess.Popen, timeout: float = 300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()
    with open(f"/proc/{proc.pid}/stat") as f:
      if f.read().rsplit(")", 1)[1].split()[0] == "T":
        return
    time.sleep(0.05)
  proc.kill()
  raise TimeoutError("the run never reached its first checkpoint")


def run_changed_midway(workdir, change):
  """Runs the tiny study into `workdir`, stopping it after its first checkpoint;
  inside `change(workdir)` (a context manager) lets it go on to its end. Returns
  (process, stderr, seconds from going on to its end, the checkpoint steps and
  load_model(step=FIRST) read inside `change`)."""
  proc = subprocess.Popen(command(workdir), cwd=ROOT, env=environment(**AFTER_FIRST_CHECKPOINT),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    wait_until_stopped(proc)
    with change(workdir):
      t0 = time.monotonic()
      proc.send_signal(signal.SIGCONT)
      _, err = proc.communicate(timeout=120)
      seconds = time.monotonic() - t0
      # Reading back needs no write: the earlier checkpoint loads from the same state.
      steps = sorted(p.name for p in checkpoint_lib.directory(workdir).iterdir())
      model = analysis.load_model(workdir, step=FIRST)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return proc, err, seconds, steps, model


def assert_one_line_exit_3(proc, err, seconds, path_part: str, reasons=OS_ERRORS):
  assert proc.returncode == write_errors.EXIT_CODE, err[-3000:]
  lines = error_lines(err)
  assert len(lines) == 1, err[-3000:]
  assert "Traceback" not in err
  assert lines[0].startswith("error: could not write ") and path_part in lines[0], lines
  assert any(r in lines[0] for r in reasons), lines
  assert "rerun the same command to resume" in lines[0]
  assert seconds < 10, seconds


@pytest.fixture(scope="module")
def checkpoints_unwritable(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("checkpoints_unwritable") / "w"
  out = run_changed_midway(workdir, lambda w: read_only(checkpoint_lib.directory(w)))
  rerun = subprocess.run(command(workdir), cwd=ROOT, env=environment(), capture_output=True,
                         text=True, timeout=300)
  return workdir, out, rerun


@shared_runs
def test_an_unwritable_checkpoints_directory_ends_the_run_in_one_line(checkpoints_unwritable):
  workdir, (proc, err, seconds, steps, model), _ = checkpoints_unwritable
  assert_one_line_exit_3(proc, err, seconds, f"{checkpoint_lib.directory(workdir)}/{SECOND}")
  assert steps == [str(FIRST)]  # the failed step left nothing, not even a temporary directory
  assert model.step == FIRST and np.isfinite(
      np.concatenate([np.ravel(a) for a in _leaves(model.variables)])).all()


@shared_runs
def test_the_same_command_then_resumes_and_finishes(checkpoints_unwritable):
  workdir, _, rerun = checkpoints_unwritable
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resuming it at step {FIRST}" in rerun.stdout, rerun.stdout
  assert store.complete_segments(workdir, GROUP) == STEPS // 20


@shared_runs
def test_an_unwritable_records_directory_ends_the_run_in_one_line(tmp_path):
  workdir = tmp_path / "w"
  proc, err, seconds, steps, model = run_changed_midway(
      workdir, lambda w: read_only(store.group_dir(w, GROUP)))
  assert_one_line_exit_3(proc, err, seconds, f"{store.group_dir(workdir, GROUP)}/segment_0000")
  assert str(FIRST) in steps and model.step == FIRST
  assert not list(store.group_dir(workdir, GROUP).glob("*.tmp"))


@contextlib.contextmanager
def disk_filled(workdir: pathlib.Path):
  """Fills the filesystem of `workdir` to its last byte, then frees it again."""
  filler = workdir / "filler"
  with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
    while True:
      f.write(b"\0" * 4096)
  try:
    yield
  finally:
    filler.unlink()


@shared_runs
def test_a_disk_that_fills_mid_run_ends_it_in_one_line(tmp_path):
  with tmpfs(tmp_path / "disk", "2m") as disk:
    workdir = disk / "w"
    proc, err, seconds, steps, model = run_changed_midway(workdir, disk_filled)
    assert_one_line_exit_3(proc, err, seconds, str(workdir), ("No space left on device",))
    assert str(FIRST) in steps and model.step == FIRST
    assert not [p for p in workdir.rglob("*") if "tmp" in p.name]  # the room is given back


def test_a_filesystem_clearly_too_small_is_refused_in_one_line_before_compute(tmp_path):
  # Width 64: at least 0.11 MB of records and checkpoints, on a 64 kB filesystem.
  with tmpfs(tmp_path / "disk", "64k") as disk:
    workdir = disk / "w"
    t0 = time.monotonic()
    proc = subprocess.run(command(workdir, "--config.width=64"), cwd=ROOT, env=environment(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == write_errors.EXIT_CODE, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: --workdir={workdir} has ") and "MB free, but this run " \
        "needs at least" in lines[0] and "of records" in lines[0], lines
    assert not workdir.exists()  # nothing written: the lock file the run took is gone too
    assert time.monotonic() - t0 < 120


def test_the_run_needs_the_bytes_of_its_arrays_and_is_refused_with_less(tmp_path, monkeypatch):
  """Without a small filesystem: the free space the run sees is set. With one
  byte less than the estimate the run is refused before the workdir is written;
  with exactly the estimate it runs, and the estimate is then checked against
  the arrays it wrote: each record array of every segment, and one state per
  checkpoint kept (checkpoint_keep=2: three on disk while the third is saved)."""
  config = tiny_config(steps=80, seeds=1, **{"sweep.lr": (0.1,)}, checkpoint_segments=1,
                       checkpoint_keep=2)
  runs = runner.build_group_runs(study_lib.expand(config))
  records, checkpoints = runner.bytes_needed(runs, config)
  usage = shutil.disk_usage(tmp_path)
  workdir = tmp_path / "w"
  monkeypatch.setattr(shutil, "disk_usage",
                      lambda path: usage._replace(free=records + checkpoints - 1))
  with pytest.raises(write_errors.NotEnoughSpace, match=f"needs at least "
                     f"{write_errors.megabytes(records + checkpoints)}"):
    runner.run(config, workdir, progress=False, log=lambda line: None)
  assert not workdir.exists()
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=records + checkpoints))
  runner.run(config, workdir, progress=False, log=lambda line: None)
  [group] = [g.group.name for g in runs]
  arrays, schema = store.load_arrays(workdir, group)
  written = sum(a.nbytes for name, a in arrays.items() if name in schema["variables"])
  # The written records add what the segment's output lacks: per-model values
  # derived on the host; the estimate stays a lower bound.
  assert records <= written < 1.5 * records, (records, written)
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as ckpts:
    state = ckpts.read(ckpts.steps()[-1], [group])[group]
  assert checkpoints == 3 * sum(a.nbytes for a in _leaves(state))


def test_an_os_error_is_named_in_words():
  assert write_errors.reason(OSError(28, "x")) == "No space left on device (errno ENOSPC)"
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Failed writing: "/d/f": Failed to write 8 '
                           "bytes to file 14: No space left on device [os_error_code='28']")
  try:
    try:
      raise tensorstore
    except ValueError as inner:
      raise RuntimeError("wrapped") from inner
  except RuntimeError as outer:
    assert write_errors.reason(outer) == "No space left on device (errno ENOSPC)"
  assert write_errors.reason(RuntimeError("first\nsecond")) == "first"


def _leaves(tree):
  import jax
  return jax.tree_util.tree_leaves(tree)


@shared_runs
def test_a_summary_or_report_that_cannot_be_written_is_one_line(checkpoints_unwritable, tmp_path):
  """After the run: the report's folder is under a file, and summary.txt a directory."""
  workdir = checkpoints_unwritable[0]
  (tmp_path / "a_file").write_text("")
  out = tmp_path / "a_file" / "report"
  proc = subprocess.run([sys.executable, "-m", "icsjax.report", str(workdir), f"--out={out}"],
                        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == write_errors.EXIT_CODE, proc.stderr[-3000:]
  assert error_lines(proc.stderr) == [f"error: could not write {out}: Not a directory "
                                      f"(errno ENOTDIR)"], proc.stderr
  (tmp_path / "summary.txt").mkdir()
  with pytest.raises(write_errors.WriteFailed, match=f"could not write {tmp_path}/summary.txt: "
                     "Is a directory"):
    summary_lib.write(tmp_path, store.load(workdir), eval_every=20)
  assert not list(tmp_path.glob("*.tmp"))
