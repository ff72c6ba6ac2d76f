"""A workdir in a bucket (gs://, a local emulator: tests/gcs_emulator.py): a run
killed mid-write and resumed there gives records bitwise equal to a local run;
analysis and the report read it; a segment without its commit marker is never
read as complete; the lock object refuses a second run while its holder lives."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from icsjax import analysis
from icsjax import checkpoint as checkpoint_lib
from icsjax import faults
from icsjax import report
from icsjax import runner
from icsjax import store
from icsjax import workdir_lock
from icsjax import workdir_path
from icsjax import write_errors
from test_clean_failures import LOCK_HOLDER, TINY

TESTS = os.path.dirname(os.path.abspath(__file__))
GROUP = "norm-batchnorm"
SEGMENT, STEPS = 20, 60
# The worker process: the same study, with the tests' compile settings (conftest).
WORKER = (f"import sys; sys.path[:0] = [{ROOT!r}, {TESTS!r}]; import test_bucket as t; "
          f"t.run_study(sys.argv[1])")

# One emulator, one reference run and one bucket run for the module's tests.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bucket")]


def study_config():
  """One group of 2 models, three segments with a checkpoint after each."""
  c = tiny_config(steps=STEPS, segment_steps=SEGMENT, checkpoint_segments=1)
  c.sweep.lr = (0.1,)
  return c


def run_study(workdir, log=lambda *_: None):
  return runner.run(study_config(), workdir, progress=False, log=log)


def start(args, **env) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=dict(os.environ, **env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_steps(workdir) -> list[int]:
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as checkpoints:
    return checkpoints.steps()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("local") / "w"
  run_study(workdir)
  return workdir


@pytest.fixture(scope="module")
def killed_and_resumed(gcs_bucket):
  """A run into the bucket killed once segment 2's object is uploaded, before its
  commit marker (step 20's checkpoint is complete: a save waits for the one
  before); what the kill left; then the same study resumed there."""
  workdir = gcs_bucket.uri("killed")
  worker = start(["-c", WORKER, workdir], **{faults.ENV: "record_write:3"})
  _, err = worker.communicate(timeout=300)
  assert worker.returncode == -signal.SIGKILL, err[-3000:]
  segments = store.group_dir(workdir, GROUP)
  left = {"objects": sorted(p.name for p in segments.iterdir()),
          "complete": store.complete_segments(workdir, GROUP),
          "checkpoints": checkpoint_steps(workdir),
          "lock": workdir_lock.BucketLock.read(workdir_lock.lock_path(workdir))}
  log = []
  run_study(workdir, log.append)
  return workdir, left, log


def test_a_killed_bucket_run_leaves_a_segment_without_its_marker_unread(killed_and_resumed):
  _, left, _ = killed_and_resumed
  assert left["objects"] == ["schema.json", "segment_000000.npz", "segment_000000.npz.commit",
                             "segment_000001.npz", "segment_000001.npz.commit",
                             "segment_000002.npz"]
  assert left["complete"] == 2
  assert left["checkpoints"][0] == 20
  assert left["lock"]["host"] == socket.gethostname()  # the dead run's, taken over at once


def test_a_killed_bucket_run_resumes_to_records_bitwise_equal_to_a_local_run(
    killed_and_resumed, local):
  workdir, _, log = killed_and_resumed
  assert any(re.search("resuming it at step (20|40)", m) for m in log), log
  got, want = store.load_arrays(workdir, GROUP)[0], store.load_arrays(local, GROUP)[0]
  assert got.keys() == want.keys()
  for name, a in want.items():
    np.testing.assert_array_equal(got[name], a, err_msg=name)
  assert sorted(p.name for p in store.group_dir(workdir, GROUP).iterdir()) == [
      "schema.json", *[f"segment_{i:06d}.npz{c}" for i in range(3) for c in ("", ".commit")]]
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as bucket_ckpts, \
      checkpoint_lib.Checkpoints(local, async_save=False) as local_ckpts:
    assert bucket_ckpts.steps() == local_ckpts.steps() == [20, 40, 60]
    assert bucket_ckpts.read_meta(60)["checksums"] == local_ckpts.read_meta(60)["checksums"]
  for name in ("config.json", "grid.json", "summary.txt"):
    assert (workdir_path.path(workdir) / name).read_text() == (local / name).read_text()
  assert not workdir_lock.lock_path(workdir).exists()  # released at the run's end


def test_analysis_and_the_report_read_a_bucket_workdir(killed_and_resumed, local):
  workdir, _, _ = killed_and_resumed
  assert analysis.load(workdir).identical(analysis.load(local))
  model = analysis.load_model(workdir, seed=1)
  assert model.step == STEPS
  md = report.write(workdir)
  assert str(md) == f"{workdir}/report/report.md"
  local_md = report.write(local)
  assert md.read_text().replace(workdir, "W") == local_md.read_text().replace(str(local), "W")
  html = (md.parent / "report.html").read_text()
  assert html.count("data:image/png;base64,") == len(list(md.parent.glob("*.png"))) > 0


def test_a_segment_without_its_commit_marker_is_not_read_and_is_deleted_on_resume(
    gcs_bucket):
  workdir = gcs_bucket.uri("markers")
  arrays = {"kind": {"x": np.arange(6.0).reshape(1, 6)}}
  for i in range(3):
    store.write_segment(workdir, "g", i, arrays, {"step": np.arange(6) + 6 * i})
  store.commit_marker(store.group_dir(workdir, "g") / "segment_000001.npz").unlink()
  assert [p.name for p in store.segment_paths(workdir, "g")] == ["segment_000000.npz",
                                                                 "segment_000002.npz"]
  assert store.complete_segments(workdir, "g") == 1
  store.truncate(workdir, "g", 1)
  assert sorted(p.name for p in store.group_dir(workdir, "g").iterdir()) == [
      "segment_000000.npz", "segment_000000.npz.commit"]


def test_a_bucket_workdir_holding_another_config_is_refused(killed_and_resumed):
  workdir, _, _ = killed_and_resumed
  assert store.check_workdir(workdir, study_config().to_json()) == "resume"
  with pytest.raises(FileExistsError, match="holds a study with a different config"):
    store.check_workdir(workdir, tiny_config().to_json())


def test_a_second_run_on_a_bucket_workdir_held_by_a_live_run_is_refused_in_one_line(
    gcs_bucket):
  workdir = gcs_bucket.uri("held")
  holder = start(["-c", LOCK_HOLDER, workdir], PYTHONPATH=ROOT)
  try:
    assert holder.stdout.readline().strip() == "held", holder.stderr.read()
    assert workdir_lock.live_holder(workdir)["pid"] == holder.pid
    second = subprocess.run([sys.executable, "-m", "icsjax.main", *TINY, f"--workdir={workdir}",
                             "--progress=false"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
  finally:
    holder.kill()
    holder.wait()
  lines = [line for line in second.stderr.splitlines() if line.strip()]
  assert second.returncode == 2, second.stderr
  assert len(lines) == 1 and lines[0].startswith(
      f"error: --workdir={workdir} is in use by another run (host {socket.gethostname()}, "
      f"pid {holder.pid}, started "), lines
  # The holder died on this host: its lock object locks nothing, and is taken over.
  assert workdir_lock.live_holder(workdir) is None
  with workdir_lock.hold(workdir):
    assert workdir_lock.BucketLock.read(workdir_lock.lock_path(workdir))["pid"] == os.getpid()
  assert not workdir_lock.lock_path(workdir).exists()


@pytest.mark.parametrize("age, busy", [(5, True), (workdir_lock.STALE_SECONDS + 5, False)])
def test_a_lock_of_another_host_is_stale_when_its_heartbeat_is_old(gcs_bucket, age, busy):
  workdir = gcs_bucket.uri(f"other-host-{age}")
  other = {"host": "another-host", "pid": 1, "started": "then", "heartbeat": time.time() - age}
  workdir_lock.lock_path(workdir).write_text(json.dumps(other))
  assert (workdir_lock.live_holder(workdir) is not None) == busy
  if busy:
    with pytest.raises(workdir_lock.WorkdirBusy, match="host another-host, pid 1, started then"
                       r", last heard of \d+ s ago"):
      with workdir_lock.hold(workdir):
        pass
  else:
    with workdir_lock.hold(workdir):
      assert workdir_lock.live_holder(workdir) is None  # this process's own


def test_the_holder_refreshes_its_heartbeat(gcs_bucket, monkeypatch):
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECONDS", 0.05)
  workdir = gcs_bucket.uri("heartbeat")
  with workdir_lock.hold(workdir):
    first = workdir_lock.BucketLock.read(workdir_lock.lock_path(workdir))["heartbeat"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
      beat = workdir_lock.BucketLock.read(workdir_lock.lock_path(workdir)).get("heartbeat", first)
      if beat > first:
        break
      time.sleep(0.05)
  assert beat > first


def test_of_two_runs_taking_a_bucket_lock_at_once_one_is_refused(gcs_bucket, monkeypatch):
  """The lock object is created only if absent: a run that read no lock, but finds
  it created by another before its own create, is refused naming that one."""
  workdir = gcs_bucket.uri("race")
  other = {"host": "another-host", "pid": 7, "started": "then", "heartbeat": time.time()}
  read, calls = workdir_lock.BucketLock.read, []

  def read_before_the_other_creates_it(path):
    calls.append(path)
    if len(calls) == 1:
      workdir_lock.lock_path(workdir).write_text(json.dumps(other))
      return {}
    return read(path)

  monkeypatch.setattr(workdir_lock.BucketLock, "read", staticmethod(read_before_the_other_creates_it))
  with pytest.raises(workdir_lock.WorkdirBusy, match="host another-host, pid 7"):
    with workdir_lock.hold(workdir):
      pass
  assert json.loads(workdir_lock.lock_path(workdir).read_text())["pid"] == 7  # untouched


def test_an_error_of_the_bucket_client_is_a_write_failure():
  from gcsfs.retry import HttpError
  with pytest.raises(write_errors.WriteFailed, match="could not write gs://b/w/x: Unauthorized"):
    with write_errors.writing("gs://b/w/x"):
      raise HttpError({"code": 401, "message": "Unauthorized"})
  with pytest.raises(ValueError):  # anything else is a bug, not a write failure
    with write_errors.writing("gs://b/w/x"):
      raise ValueError("a bug")


def test_a_checkpoint_step_without_its_commit_file_is_not_listed_and_is_saved_again(
    gcs_bucket):
  """In a bucket orbax renames nothing: a step counts once its commit_success.txt
  exists (a save killed before it leaves a step no listing shows), and saving
  that step again replaces what the unfinished one left."""
  workdir = gcs_bucket.uri("unfinished-step")
  state = {"w": np.arange(6.0).reshape(2, 3)}
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as checkpoints:
    for step in (20, 40):
      checkpoints.save(step, {"g": state}, "fingerprint")
    (checkpoint_lib.directory(workdir) / "40" / "commit_success.txt").unlink()
    assert checkpoints.steps() == [20]
    again = {"w": state["w"] + 1}
    checkpoints.save(40, {"g": again}, "fingerprint")
    assert checkpoints.steps() == [20, 40]
    np.testing.assert_array_equal(checkpoints.read(40, ["g"])["g"]["w"], again["w"])


def test_a_bucket_run_writes_its_live_metrics_into_the_bucket(killed_and_resumed, local,
                                                              tmp_path):
  """tensorboardX writes the event files through its own Cloud Storage client; copied
  out of the bucket they read back as the local run's (throughput aside, which is
  wall time)."""
  from icsjax import live_metrics
  from test_live_metrics import read_events, without_throughput
  workdir, _, _ = killed_and_resumed
  events = workdir_path.path(live_metrics.group_directory(workdir, GROUP))
  names = sorted(p.name for p in events.iterdir())
  assert len(names) == 2 and all(n.startswith("events") for n in names)  # killed, resumed
  copy = tmp_path / live_metrics.DIRECTORY / GROUP
  copy.mkdir(parents=True)
  for name in names:
    (copy / name).write_bytes((events / name).read_bytes())
  got, want = read_events(tmp_path, GROUP), read_events(local, GROUP)
  assert without_throughput(got) == without_throughput(want) and without_throughput(want)
