"""Many hosts, for real on one machine: 2 processes x 2 virtual CPU devices,
JAX's CPU collectives (gloo), the coordinator on 127.0.0.1. Their records equal
a 1-process, 4-device run's bitwise; a checkpoint they saved restores in one
process, which finishes the study; when one of them is killed the other stops
at once; a workdir they do not share is refused. A single process never
starts JAX's distributed runtime."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, tiny_config
from icsjax import hosts
from icsjax import placement
from icsjax import runner
from icsjax import store
from icsjax.config_files import CommandLineError
from test_checkpoint import assert_bitwise_equal, state_checksums

# The subprocess runs share their results through module fixtures; one worker runs them.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multihost")]

TESTS = os.path.dirname(os.path.abspath(__file__))
GROUPS = ("norm-none", "norm-batchnorm")
HEARTBEAT = 10
CONFIG_FILE = f"""
import sys
sys.path[:0] = [{ROOT!r}, {TESTS!r}]
import test_multihost  # with conftest: the tests' compile settings and jit cache

def get_config():
  return test_multihost.study_config()
"""


def study_config():
  """Two groups of 4 models (2 seeds x 2 learning rates), each spread over all 4
  devices of the 2 processes; two segments, a checkpoint after each."""
  c = tiny_config(steps=40, segment_steps=20, seeds=2, checkpoint_segments=1, cpu_devices=2)
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (0.1, 0.2)
  return c


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(config_file, workdirs, kill_at=(), devices=None):
  """One `python -m icsjax.main` per workdir (several: one process each of a run
  of that many); kill_at: the faults spec of each, devices: XLA's device count
  for a single process (else the config's cpu_devices)."""
  n, port = len(workdirs), free_port()
  procs = []
  for i, workdir in enumerate(workdirs):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ICSJAX_KILL_AT")}
    if devices:
      env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if kill_at and kill_at[i]:
      env["ICSJAX_KILL_AT"] = kill_at[i]
    cmd = [sys.executable, "-m", "icsjax.main", f"--config={config_file}",
           f"--workdir={workdir}", "--noreport", "--noprogress"]
    if n > 1:
      cmd += [f"--num_processes={n}", f"--process_id={i}",
              f"--coordinator_address=127.0.0.1:{port}", f"--heartbeat_timeout={HEARTBEAT}"]
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  return procs


def finish(procs, timeout=240):
  """[(returncode, stdout, stderr, seconds from start to exit)] of each process."""
  t0, out = time.monotonic(), []
  for p in procs:
    o, e = p.communicate(timeout=timeout)
    out.append((p.returncode, o, e, time.monotonic() - t0))
  return out


def records(workdir) -> dict:
  return {g: store.load_arrays(workdir, g)[0] for g in GROUPS}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("config") / "multihost_config.py"
  path.write_text(CONFIG_FILE)
  return path


@pytest.fixture(scope="module")
def reference(config_file, tmp_path_factory):
  """One process over 4 devices (the same config: XLA's flag sets the count)."""
  workdir = tmp_path_factory.mktemp("one") / "w"
  [(code, out, err, _)] = finish(start(config_file, [workdir], devices=4))
  assert code == 0, err[-3000:]
  return workdir, out


@pytest.fixture(scope="module")
def two(config_file, tmp_path_factory):
  """The same study run by 2 processes of 2 devices each."""
  workdir = tmp_path_factory.mktemp("two") / "w"
  results = finish(start(config_file, [workdir, workdir]))
  for code, _, err, _ in results:
    assert code == 0, err[-3000:]
  return workdir, results


def test_two_processes_write_the_records_of_one_bitwise(reference, two):
  workdir, results = two
  # The compiled per-device program is the same: each of the 4 devices trains
  # one model of each group, so the arithmetic is too.
  assert_bitwise_equal(records(workdir), records(reference[0]))
  (_, out0, _, _), (_, out1, _, _) = results
  assert "of 2 processes" in out0 and "variant" in out0  # process 0: the log and the summary
  assert "variant" not in out1  # the others: one line per segment
  assert [line for line in out1.splitlines() if "segment" in line] == [
      "process 1 of 2: segment 1 of 2 done (step 20)",
      "process 1 of 2: segment 2 of 2 done (step 40)"]
  # The same checkpoints, file format and bytes, as one process writes.
  assert state_checksums(workdir) == state_checksums(reference[0])
  assert sorted(state_checksums(workdir)) == [20, 40]
  assert not (workdir / "hosts_marker").exists()
  grid = json.loads((workdir / "grid.json").read_text())
  assert [g["name"] for g in grid["groups"]] == list(GROUPS)
  assert len(json.loads((workdir / "versions.json").read_text())["devices"]) == 4


def test_a_single_process_runs_without_the_distributed_runtime(reference):
  _, out = reference
  assert "XLA_FLAGS already sets" in out and "process" not in out.split("\n")[0]
  assert "of 2 processes" not in out


def test_a_killed_process_stops_the_other_and_one_process_resumes(reference, config_file,
                                                                   tmp_path):
  workdir = tmp_path / "w"
  # Process 0 is killed once the step-20 checkpoint is complete on disk.
  (code0, _, _, t0), (code1, _, err1, t1) = finish(
      start(config_file, [workdir, workdir], kill_at=("checkpoint_saved:1", "")))
  assert code0 == -signal.SIGKILL
  assert code1 == hosts.EXIT_CODE, err1[-3000:]
  assert t1 - t0 < HEARTBEAT + 5  # at the next collective, here at once
  lines = [line for line in err1.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "another process of this run stopped" in lines[0], err1[-2000:]
  assert "rerun the same command on every host" in lines[0]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20"]
  # One process (4 devices) finishes the study the two began.
  [(code, out, err, _)] = finish(start(config_file, [workdir], devices=4))
  assert code == 0, err[-3000:]
  assert "resuming it at step 20" in out, out
  assert "other versions" not in out  # the versions that wrote the workdir
  assert_bitwise_equal(records(workdir), records(reference[0]))


def test_a_preemption_notice_stops_both_processes_at_one_step(reference, config_file,
                                                             tmp_path):
  """SIGTERM to process 1 after its first segment: JAX's preemption service
  spreads the notice, both stop at the same boundary (the first one all of
  them reach after it), process 0 saves it, both exit 75; the rerun resumes."""
  from icsjax import preemption
  workdir = tmp_path / "w"
  results = finish(start(config_file, [workdir, workdir],
                         kill_at=("", "after_segment:1:TERM")))
  for code, _, err, _ in results:
    assert code == preemption.EXIT_CODE, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("preempted:")]
    assert len(lines) == 1 and "saved a checkpoint at step" in lines[0], err[-2000:]
  step = int(results[0][2].split("saved a checkpoint at step ")[1].split(";")[0])
  assert f"at step {step};" in results[1][2]  # the same boundary on both
  assert step in (20, 40) and max(state_checksums(workdir)) == step
  [(code, out, err, _)] = finish(start(config_file, [workdir], devices=4))
  assert code == 0, err[-3000:]
  assert f"resuming it at step {step}" in out, out
  assert_bitwise_equal(records(workdir), records(reference[0]))


def stopped(pid: int) -> bool:
  with open(f"/proc/{pid}/stat") as f:
    return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_hung_process_stops_the_other_within_the_heartbeat_timeout(config_file, tmp_path):
  """A process that stops answering (SIGSTOP, before it loads the data) sends no
  heartbeats: JAX's runtime ends the other, waiting for it in its first
  collective, with its own fatal message."""
  workdir = tmp_path / "w"
  procs = start(config_file, [workdir, workdir], kill_at=("", "run_start:1:STOP"))
  try:
    deadline = time.monotonic() + 200
    while not stopped(procs[1].pid):
      assert procs[1].poll() is None and time.monotonic() < deadline
      time.sleep(0.1)
    hung = time.monotonic()
    _, err0 = procs[0].communicate(timeout=3 * HEARTBEAT + 30)
    waited = time.monotonic() - hung
  finally:
    procs[1].kill()
    procs[1].communicate()
  assert procs[0].returncode == -signal.SIGABRT, err0[-3000:]
  assert "Terminating process because the JAX distributed service detected fatal errors" \
      in err0
  # From the last heartbeat the hung process sent, which may precede the stop.
  assert waited < HEARTBEAT + 10, waited


def test_a_workdir_the_processes_do_not_share_is_refused(config_file, tmp_path):
  results = finish(start(config_file, [tmp_path / "a", tmp_path / "b"]))
  for code, _, err, _ in results:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and "is not shared by the processes of this run: process 1" \
        in lines[0], err[-2000:]


def test_a_resumed_run_says_when_the_versions_changed(reference, tmp_path):
  workdir = tmp_path / "w"
  shutil.copytree(reference[0], workdir)
  versions = json.loads((workdir / "versions.json").read_text())
  versions["jax"] = "0.0.1"
  (workdir / "versions.json").write_text(json.dumps(versions))
  log = []
  runner.run(study_config(), workdir, progress=False, log=log.append)
  changed = [m for m in log if "other versions" in m]
  assert len(changed) == 1 and f"jax 0.0.1 -> {store.versions()['jax']}" in changed[0]
  assert "no longer bitwise identical" in changed[0]
  assert_bitwise_equal(records(workdir), records(reference[0]))


def test_a_single_process_never_calls_jax_distributed_initialize(monkeypatch):
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  for name in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST",
               "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  for num_processes in (None, 1):
    p = hosts.plan(num_processes, None, None, 30, hosts.detected_cluster())
    assert p is None
    assert hosts.start(p) == (0, 1)
  assert hosts.plan(None, None, None, 30, ("SlurmCluster", 1)) is None  # a cluster of one
  assert not calls and not hosts.joined()


def test_a_run_of_several_without_its_coordinator_is_refused_in_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "icsjax.main", "--config=default",
                        f"--workdir={tmp_path / 'w'}", "--num_processes=2", "--process_id=0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [
      "error: --num_processes=2 needs --coordinator_address too (--process_id from 0 to 1 on "
      "each process, and the same --coordinator_address=HOST:PORT of process 0 on all)"]
  assert not (tmp_path / "w").exists()


def test_a_slurm_job_is_detected_as_a_cluster(monkeypatch):
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-4]", "SLURM_PROCID": "2",
           "SLURM_LOCALID": "0"}
  for name, value in slurm.items():
    monkeypatch.setenv(name, value)
  for tasks in (1, 4):
    monkeypatch.setenv("SLURM_NTASKS", str(tasks))
    assert hosts.detected_cluster() == ("SlurmCluster", tasks)
  p = hosts.plan(None, None, None, 30, hosts.detected_cluster())
  assert p == hosts.Plan(None, None, None, 30, "SlurmCluster")  # initialize() finds the rest


def test_the_flags_of_a_run_of_several_are_checked():
  assert hosts.plan(2, 1, "10.0.0.1:1234", 30, None) == hosts.Plan("10.0.0.1:1234", 2, 1, 30)
  assert hosts.plan(None, None, None, 30, ("SlurmCluster", 4)) == hosts.Plan(
      None, None, None, 30, "SlurmCluster")
  for args, words in [((2, None, "h:1", 30), "--process_id"),
                      ((2, 0, None, 30), "--coordinator_address"),
                      ((2, 2, "h:1", 30), "--process_id=2 must be from 0 to 1"),
                      ((2, 0, "h", 30), "HOST:PORT"),
                      ((1, 0, None, 30), "--process_id is given"),
                      ((None, None, "h:1", 30), "--coordinator_address is given"),
                      ((2, 0, "h:1", 0), "--heartbeat_timeout=0"),
                      ((0, None, None, 30), "--num_processes=0")]:
    with pytest.raises(CommandLineError, match=words):
      hosts.plan(*args, None)


def test_devices_for_several_processes_takes_a_multiple_of_them():
  for processes in (1, 2, 4):
    for available in (processes, 2 * processes, 4 * processes):
      for k in range(1, 14):
        got = placement.devices_for(k, available, processes)
        best = min(range(processes, available + 1, processes),
                   key=lambda d: (-(-k // d), d * -(-k // d) - k))
        assert got == best and got % processes == 0, (k, available, processes)
  assert placement.devices_for(1, 4, 2) == 2  # one model and a padding copy
  assert placement.devices_for(6, 4, 2) == 4  # 2 per device (2 padding copies) beats 3
