"""A run that goes wrong fails cleanly: one run per workdir (a second is refused
at once, naming the first), a user's mistake is one line on stderr with exit
code 2, Ctrl-C stops at once with exit code 130 and the rerun resumes to the
records of an uninterrupted run, and the progress bar counts whole steps.

Every run here is the command line a user types, in a subprocess, on a tiny
study; the runs the tests compare are module fixtures, computed once.
"""

import io
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

from conftest import ROOT
from icsjax import analysis
from icsjax import checkpoint as checkpoint_lib
from icsjax import config_files
from icsjax import faults
from icsjax import store
from icsjax import workdir_lock
from icsjax.progress import Progress
from icsjax.report import study_info

# The tests that compare runs share the fixtures' runs (tens of seconds in all):
# one worker (pytest -n) runs them, and starts them first.
def shared_runs(test):
  return pytest.mark.slow(pytest.mark.xdist_group("clean_failures")(test))

STEPS = 100
# One group of one model: 5 segments of 20 steps, a checkpoint after each.
TINY = ("--config=configs/default.py", "--config.width=8", "--config.depth=1",
        f"--config.steps={STEPS}", "--config.seeds=1", "--config.segment_steps=20",
        "--config.scan_length=10", "--config.record_every=10", "--config.eval_every=20",
        "--config.ics_every=0", "--config.landscape_every=0", "--config.curvature_every=0",
        "--config.test_time_every=0", "--config.batch_size=16", "--config.monitor_size=32",
        "--config.tracked_units=(0,3)", "--config.sweep.norm=(batchnorm,)",
        "--config.sweep.lr=(0.1,)", "--config.sweep.depth=(1,)", "--config.checkpoint_segments=1",
        "--config.cpu_devices=1", "--report=false")
GROUP = "depth-1_norm-batchnorm"
LOCK_HOLDER = ("import sys, time; from icsjax import workdir_lock; "
               "held = workdir_lock.hold(sys.argv[1]); held.__enter__(); print('held', flush=True); "
               "time.sleep(120)")


def command(workdir, *extra, progress=False):
  return [sys.executable, "-m", "icsjax.main", *TINY, f"--workdir={workdir}",
          f"--progress={str(progress).lower()}", *extra]


def environment(**extra):
  # The tests' compile settings (conftest): unoptimised programs compile fast.
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true",
              **extra)


def run_cli(workdir, *extra, timeout=300, **env):
  return subprocess.run(command(workdir, *extra), cwd=ROOT, env=environment(**env),
                        capture_output=True, text=True, timeout=timeout)


def start_cli(workdir, *extra, progress=False, **env):
  return subprocess.Popen(command(workdir, *extra, progress=progress), cwd=ROOT,
                          env=environment(**env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def records(workdir) -> dict:
  return store.load_arrays(workdir, GROUP)[0]


def state_checksums(workdir) -> dict:
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as ckpts:
    return {s: ckpts.read_meta(s)["checksums"] for s in ckpts.steps()}


def assert_bitwise_equal(got: dict, want: dict):
  assert got.keys() == want.keys()
  for name, a in want.items():
    np.testing.assert_array_equal(got[name], a, err_msg=name)


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.strip()]


def wait_for_holder(workdir, pid: int, proc: subprocess.Popen, timeout: float = 120):
  """Waits until process `pid` has written itself into WORKDIR's lock file."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()
    try:
      if json.loads(workdir_lock.lock_path(workdir).read_text() or "{}").get("pid") == pid:
        return
    except (OSError, ValueError):
      pass
    time.sleep(0.05)
  raise TimeoutError(f"{pid} never took the lock of {workdir}")


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
  """An uninterrupted run alone on its workdir: its records and checkpoints."""
  workdir = tmp_path_factory.mktemp("solo") / "w"
  out = run_cli(workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, records(workdir), state_checksums(workdir)


@pytest.fixture(scope="module")
def contended(tmp_path_factory):
  """Two runs of one command on one workdir: the second starts once the first
  holds the lock. The first shows its progress bar.

  The first is paused (SIGSTOP, which keeps its lock) while the second runs:
  a tiny study can otherwise finish, and free the workdir, before the second
  has imported jax."""
  workdir = tmp_path_factory.mktemp("contended") / "w"
  first = start_cli(workdir, progress=True)
  wait_for_holder(workdir, first.pid, first)
  os.kill(first.pid, signal.SIGSTOP)
  try:
    t0 = time.monotonic()
    second = run_cli(workdir, timeout=60)
    second_seconds = time.monotonic() - t0
  finally:
    os.kill(first.pid, signal.SIGCONT)
  out, err = first.communicate(timeout=300)
  return dict(workdir=workdir, first=first, first_out=out, first_err=err, second=second,
              second_seconds=second_seconds)


# --- one run per workdir ----------------------------------------------------------

@shared_runs
def test_a_second_run_on_a_busy_workdir_is_refused_within_10_s_naming_the_first(contended):
  second = contended["second"]
  assert second.returncode == 2, second.stderr
  lines = error_lines(second.stderr)
  assert len(lines) == 1, second.stderr
  assert lines[0].startswith(f"error: --workdir={contended['workdir']} is in use by another run")
  assert f"pid {contended['first'].pid}" in lines[0]
  assert f"host {socket.gethostname()}" in lines[0] and "started 20" in lines[0]
  assert "Traceback" not in second.stderr
  assert contended["second_seconds"] < 10


@shared_runs
def test_the_first_run_finishes_with_a_solo_runs_records_and_checkpoints(contended, solo):
  assert contended["first"].returncode == 0, contended["first_err"][-3000:]
  _, want, want_sums = solo
  assert_bitwise_equal(records(contended["workdir"]), want)
  assert state_checksums(contended["workdir"]) == want_sums


@shared_runs
def test_the_progress_bar_counts_whole_steps_and_says_what_compiles(contended):
  err = contended["first_err"]
  counts = re.findall(r"(\S+)/100 \[", err)
  assert counts and all(re.fullmatch(r"\d+", c) for c in counts), counts
  assert int(counts[-1]) == STEPS
  assert f"compiling group {GROUP}..." in err
  assert re.search(rf"compiled group {GROUP} in \d+\.\d s", err)


def test_progress_of_several_groups_shows_whole_steps():
  out = io.StringIO()
  bar = Progress(60, 3, 6, True, file=out)
  bar.compiling("g0")
  bar.compiled()
  shown = []
  for _ in range(9):  # three segments of 20 steps, group by group
    bar.group_done(20)
    shown.append(bar.bar.n)
  bar.close()
  assert shown == [6, 13, 20, 26, 33, 40, 46, 53, 60]
  assert all(isinstance(n, int) for n in shown)
  counts = re.findall(r"(\S+)/60 \[", out.getvalue())
  assert counts and all(c.isdigit() for c in counts), counts
  assert re.search(r"compiling group g0\.\.\.\n.*compiled group g0 in \d+\.\d s", out.getvalue(),
                   re.S)


def test_a_lock_whose_holder_died_locks_nothing(tmp_path):
  workdir = tmp_path / "w"
  holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(workdir)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    live = workdir_lock.live_holder(workdir)
    assert live["pid"] == holder.pid and live["host"] == socket.gethostname()
    with pytest.raises(workdir_lock.WorkdirBusy, match=f"pid {holder.pid}"):
      with workdir_lock.hold(workdir, retry_seconds=0.2):
        pass
  finally:
    holder.kill()
    holder.wait()
  assert workdir_lock.live_holder(workdir) is None  # the file is still there
  with workdir_lock.hold(workdir, retry_seconds=0):
    assert json.loads(workdir_lock.lock_path(workdir).read_text())["pid"] == os.getpid()
    assert workdir_lock.live_holder(workdir) is None  # this process's own


@shared_runs
def test_a_report_of_a_live_run_says_it_is_in_progress(solo):
  """A reader never takes the lock; while a run holds it, the report says how far
  the records go (here a helper holds the lock of the finished solo workdir)."""
  workdir = solo[0]
  holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(workdir)], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    ds = analysis.load(workdir)  # reading does not wait for, or take, the lock
    info = study_info.read(workdir)
    notes = [n.text for n in study_info.warnings(ds, info)]
  finally:
    holder.kill()
    holder.wait()
  assert info["live"]["step"] == STEPS and info["live"]["holder"]["pid"] == holder.pid
  assert any(t.startswith(f"this study is in progress, at step {STEPS} of {STEPS}")
             and f"pid {holder.pid}" in t for t in notes), notes
  assert study_info.read(workdir)["live"] is None


# --- a user's mistakes: one line, exit code 2 --------------------------------------

def bad_inputs(tmp_path):
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "no_get_config.py").write_text("import ml_collections\nX = 1\n")
  (tmp_path / "raises.py").write_text("def get_config():\n  return {}['width']\n")
  (tmp_path / "a_file").write_text("")
  if os.geteuid() == 0:  # root writes anywhere permissions allow; sysfs refuses it
    unwritable = "/sys/icsjax-test-workdir"
  else:
    (tmp_path / "read_only").mkdir(mode=0o555)
    unwritable = str(tmp_path / "read_only" / "w")
  (tmp_path / "tfds").mkdir()
  return {
      "unknown-field": (["--config.foo=1"], {}, "--config.foo is not a field of the config"),
      "unknown-config": (["--config=configs/nope.py"], {},
                         "config 'configs/nope.py' is neither a file nor a shipped config"),
      "syntax-error": ([f"--config={tmp_path / 'syntax.py'}"], {}, "has a syntax error at line 1"),
      "no-get-config": ([f"--config={tmp_path / 'no_get_config.py'}"], {},
                        "defines no get_config()"),
      "get-config-raises": ([f"--config={tmp_path / 'raises.py'}"], {},
                            "its get_config() raised KeyError"),
      "workdir-is-a-file": ([f"--workdir={tmp_path / 'a_file'}"], {}, "is a file; give a directory"),
      "workdir-unwritable": ([f"--workdir={unwritable}"], {}, "is not writable"),
      "dataset-not-prepared": (["--config.dataset=mnist", "--config.batch_size=16"],
                               {"TFDS_DATA_DIR": str(tmp_path / "tfds")},
                               "TFDS dataset 'mnist' is not prepared"),
      "sweep-a-run-field": (["--config.sweep.steps=(100,200)"], {},
                            "config.sweep.steps cannot be swept"),
      "bad-value": (["--config.width=abc"], {}, "flag --config.width=abc: invalid literal"),
      "unknown-flag": (["--nosuchflag"], {}, "Unknown command line flag 'nosuchflag'"),
      # The last of a repeated tuple flag wins (ml_collections would join the two).
      "tuple-flag-twice": (["--config.tracked_units=(0,1)", "--config.tracked_units=(2,100)"],
                           {}, "config.tracked_units=(2, 100) must name units below 8"),
  }


CASES = ("unknown-field", "unknown-config", "syntax-error", "no-get-config",
         "get-config-raises", "workdir-is-a-file", "workdir-unwritable", "dataset-not-prepared",
         "sweep-a-run-field", "bad-value", "unknown-flag", "tuple-flag-twice")


@pytest.mark.parametrize("case", CASES)
def test_a_mistake_is_one_line_on_stderr_and_exit_code_2(tmp_path, case):
  if case == "workdir-unwritable" and os.geteuid() == 0 and not os.path.isdir("/sys"):
    pytest.skip("as root, only a read-only filesystem (here: sysfs) refuses a directory")
  extra, env, message = bad_inputs(tmp_path)[case]
  workdir = tmp_path / "w"
  proc = run_cli(workdir, *extra, timeout=120, **env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = error_lines(proc.stderr)
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()  # nothing written, not even the lock file


@shared_runs
def test_a_workdir_of_another_study_is_one_line(solo):
  proc = run_cli(solo[0], "--config.width=9", timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = error_lines(proc.stderr)
  assert len(lines) == 1 and "holds a study with a different config" in lines[0], proc.stderr


def test_debug_shows_the_traceback(tmp_path):
  proc = run_cli(tmp_path / "w", "--config.foo=1", timeout=120, ICSJAX_DEBUG="1")
  assert proc.returncode == 2 and "Traceback" in proc.stderr
  assert "CommandLineError: --config.foo is not a field" in proc.stderr
  assert proc.stderr.splitlines()[-1].startswith("error: --config.foo is not a field")


def test_overrides_keep_the_last_of_each_field():
  config = config_files.load("configs/default.py")
  argv = ["main", "--config=configs/default.py", "--config.tracked_units=(0,1)",
          "--config.width", "8", "--config.lp_center", "--config.tracked_units", "(2,)",
          "--config.lp_center=false", "--workdir=w", "--", "--config.width=9"]
  assert config_files.last_overrides(argv, config) == [
      "main", "--config=configs/default.py", "--config.width", "8", "--config.tracked_units",
      "(2,)", "--config.lp_center=false", "--workdir=w", "--", "--config.width=9"]
  with pytest.raises(config_files.CommandLineError, match=r"--config\.sweep\.nope is not a "
                     r"field of config\.sweep; its fields: depth, lr, norm"):
    config_files.check_overrides(["main", "--config.sweep.nope=1"], config)


def test_a_one_word_sweep_may_end_in_a_comma():
  assert config_files.sweep_values("norm", "(batchnorm,)") == ("batchnorm",)
  assert config_files.sweep_values("norm", "(none, batchnorm,)") == ("none", "batchnorm")
  for text in ("(batchnorm,", "(,)", "(none,,batchnorm)"):
    with pytest.raises(config_files.CommandLineError, match="must be a tuple of values"):
      config_files.sweep_values("norm", text)


# --- Ctrl-C ----------------------------------------------------------------------

@shared_runs
def test_ctrl_c_mid_save_then_rerun_gives_the_uninterrupted_records(solo, tmp_path):
  """SIGINT while the second checkpoint is being saved (the process signals
  itself there): exit 130 with one line; the same command then resumes."""
  _, want, want_sums = solo
  workdir = tmp_path / "w"
  stopped = run_cli(workdir, **{faults.ENV: "checkpoint_save:2:INT"})
  assert stopped.returncode == 130, stopped.stderr[-3000:]
  lines = error_lines(stopped.stderr)
  assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in \
      stopped.stderr, stopped.stderr
  assert "rerun the same command" in lines[0] and f"--workdir={workdir}" in lines[0]
  assert workdir_lock.live_holder(workdir) is None
  resumed = run_cli(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert re.search(r"resuming it at step (20|40)", resumed.stdout), resumed.stdout
  assert_bitwise_equal(records(workdir), want)
  assert state_checksums(workdir) == want_sums


def test_ctrl_c_while_compiling_stops_within_2_s(tmp_path):
  """The hard case: the main thread is inside XLA's compiler, where Python
  cannot raise KeyboardInterrupt until the call returns."""
  proc = start_cli(tmp_path / "w", "--config.steps=1000", progress=True,
                   JAX_ENABLE_COMPILATION_CACHE="false")  # a compile that takes a while
  seen = ""
  while "compiling group" not in seen:
    line = proc.stderr.readline()
    assert line, (seen, proc.communicate())
    seen += line
  t0 = time.monotonic()
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=30)
  seconds = time.monotonic() - t0
  assert proc.returncode == 130, err[-3000:]
  assert "compiled group" not in err  # it did stop mid-compile
  assert err.strip().splitlines()[-1].startswith("interrupted: ") and "Traceback" not in err
  assert seconds < 2, seconds
