"""SIGTERM (a preemption notice): the run finishes the segment in flight and
saves it when that fits preemption_budget_seconds, else exits at once keeping
the last intact checkpoint; either way with exit code 75, and rerunning the
same command gives the records of an uninterrupted run, bitwise.

The runs are the command line a user types, in subprocesses (tests/
test_clean_failures.py's helpers); the process signals itself at a named point
(icsjax.faults), which makes the moment exact. The decision rule itself is
checked on a fake clock.
"""

import re
import threading

import pytest

from conftest import tiny_config
from icsjax import checkpoint as checkpoint_lib
from icsjax import faults
from icsjax import preemption
from icsjax import store
from icsjax import study as study_lib
from icsjax import workdir_lock
from test_clean_failures import GROUP, assert_bitwise_equal, error_lines, records, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("preemption")]

# 5 segments of 20 steps; a checkpoint every 2 segments (steps 40, 80) and at the
# end (100), so that a preemption's checkpoint at step 60 is not a regular one.
EVERY_2 = "--config.checkpoint_segments=2"
LARGE = "--config.preemption_budget_seconds=120"  # anything this tiny study does fits
ZERO = "--config.preemption_budget_seconds=0"


def checkpoint_steps(workdir) -> list[int]:
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as ckpts:
    return ckpts.steps()


def final_state_checksums(workdir) -> dict:
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as ckpts:
    return ckpts.read_meta(100)["checksums"]


def preempted(workdir, kill_at: str, *flags):
  """A run sent SIGTERM at `kill_at`; it must exit with code 75 and one line."""
  out = run_cli(workdir, *flags, **{faults.ENV: f"{kill_at}:TERM"})
  assert out.returncode == preemption.EXIT_CODE, out.stderr[-3000:]
  lines = error_lines(out.stderr)
  assert len(lines) == 1 and lines[0].startswith("preempted: ") and "Traceback" not in \
      out.stderr, out.stderr
  assert "rerun the same command" in lines[0] and f"--workdir={workdir}" in lines[0]
  assert workdir_lock.live_holder(workdir) is None
  return lines[0]


def resumed(workdir, *flags) -> str:
  out = run_cli(workdir, *flags)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run: its records and its last checkpoint's checksums."""
  workdir = tmp_path_factory.mktemp("reference") / "w"
  resumed(workdir, EVERY_2, LARGE)
  return records(workdir), final_state_checksums(workdir)


def test_sigterm_mid_save_and_mid_segment_finish_the_segment_then_resume(reference,
                                                                         tmp_path):
  """Budget large. First SIGTERM while step 40's checkpoint is being saved (the
  run goes on with the segment to 60): it finishes that segment, saves step 60
  (no regular checkpoint step) and exits. The rerun resumes there; SIGTERM in
  its second segment, mid-record-write: it finishes it (step 100, the last),
  saves and exits. The third run finds the study trained and writes the
  summary."""
  want, want_state = reference
  workdir = tmp_path / "w"
  line = preempted(workdir, "checkpoint_save:1", EVERY_2, LARGE)
  assert line.startswith("preempted: saved a checkpoint at step 60; "), line
  assert store.complete_segments(workdir, GROUP) == 3 and 60 in checkpoint_steps(workdir)
  line = preempted(workdir, "record_write:2", EVERY_2, LARGE)
  assert line.startswith("preempted: saved a checkpoint at step 100; "), line
  assert "resuming it at step 100" in resumed(workdir, EVERY_2, LARGE)
  assert_bitwise_equal(records(workdir), want)
  assert final_state_checksums(workdir) == want_state


def test_sigterm_with_no_budget_exits_at_once_keeping_the_last_checkpoint(reference,
                                                                          tmp_path):
  """Budget 0, SIGTERM while step 80's checkpoint is being saved: the run does
  not train on, abandons that save (or finds it done), says which checkpoint
  the workdir keeps, and the rerun resumes from it."""
  want, _ = reference
  workdir = tmp_path / "w"
  line = preempted(workdir, "checkpoint_save:2", EVERY_2, ZERO)
  assert re.match(r"preempted: finishing the segment in flight and saving it would take "
                  r"about \d+ s, more than preemption_budget_seconds=0; the workdir keeps its "
                  r"last intact checkpoint, at step (40|80); ", line), line
  assert store.complete_segments(workdir, GROUP) == 4  # no segment after the notice
  kept = int(re.search(r"at step (\d+)", line).group(1))
  assert f"resuming it at step {kept}" in resumed(workdir, EVERY_2, ZERO)
  assert_bitwise_equal(records(workdir), want)


# --- the decision rule, on a fake clock -------------------------------------------------


class FakeCheckpoints:
  """What OnSigterm reads of checkpoint.Checkpoints."""

  def __init__(self, save_seconds=None, running_for=None, intact_step=None):
    self.save_seconds, self.running_for, self.intact_step = save_seconds, running_for, intact_step
    self.settled = []

  def save_running_for(self):
    return self.running_for

  def settle(self, seconds):
    self.settled.append(seconds)


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


class Ending:
  """Stands in for interrupt.end_process: keeps the line and code."""

  def __init__(self):
    self.line = self.code = None
    self.done = threading.Event()

  def __call__(self, line, code):
    self.line, self.code = line, code
    self.done.set()


def sigterm(clock, begin=None, boundaries_done=(), at=0.0):
  """An OnSigterm that began (begin: (boundaries, budget, checkpoints)), passed
  `boundaries_done` ((step, seconds the segment took), ...), then got SIGTERM `at`
  seconds into the next segment. Returns it and its Ending (done at once when
  it does not let the segment finish)."""
  ending = Ending()
  stop = preemption.OnSigterm("python -m icsjax.main --workdir=w", clock=clock, end=ending)
  if begin is not None:
    stop.begin(*begin)
  for step, seconds in boundaries_done:
    clock.now += seconds
    assert stop.requested(step) is False
  clock.now += at
  stop.notice()
  if not stop.finishing:
    assert ending.done.wait(5)
  return stop, ending


def test_a_measured_segment_and_save_that_fit_the_budget_are_finished():
  ckpts = FakeCheckpoints(save_seconds=2.0, intact_step=40)
  # Segments of 10 s (the first, compiling, 30 s); the save takes 2 s: 12 s in all.
  stop, ending = sigterm(Clock(), (range(20, 101, 20), 20.0, ckpts), [(20, 30.0), (40, 10.0)],
                         at=3.0)
  assert stop.finishing and not ending.done.is_set()
  assert stop.requested(60) is True  # the runner saves at 60 and stops
  # 9 s left of 12, against a budget of 5: not even tried.
  stop, ending = sigterm(Clock(), (range(20, 101, 20), 5.0, ckpts), [(20, 30.0), (40, 10.0)],
                         at=3.0)
  assert not stop.finishing and ending.code == preemption.EXIT_CODE
  assert ending.line.startswith(
      "preempted: finishing the segment in flight and saving it would take about 9 s, more "
      "than preemption_budget_seconds=5; the workdir keeps its last intact checkpoint, at "
      "step 40; rerun the same command"), ending.line


def test_an_unmeasured_save_counts_as_long_as_a_segment():
  for budget, fits in ((8.0, True), (7.9, False)):
    stop, _ = sigterm(Clock(), (range(20, 101, 20), budget, FakeCheckpoints()),
                      [(20, 30.0), (40, 4.0)])
    assert stop.finishing == fits, budget


def test_with_nothing_measured_or_nothing_to_save_the_run_exits_at_once():
  cases = {
      "no segment was in flight": dict(),  # before the run began: starting, compiling
      "the segment in flight is this run's first": dict(
          begin=(range(20, 101, 20), 1e6, FakeCheckpoints(save_seconds=0.0))),
      "this run saves no checkpoints (checkpoint_segments=0)": dict(
          begin=(range(20, 101, 20), 1e6, None), boundaries_done=[(20, 1.0)]),
  }
  for why, kwargs in cases.items():
    stop, ending = sigterm(Clock(), **kwargs)
    assert not stop.finishing and ending.code == preemption.EXIT_CODE, why
    assert ending.line.startswith(f"preempted: {why}"), ending.line
  # After the last boundary (summary, report) nothing is in flight either.
  _, ending = sigterm(Clock(), (range(80, 101, 20), 1e6, FakeCheckpoints(1.0, intact_step=100)),
                      [(80, 5.0), (100, 5.0)])
  assert ending.line == ("preempted: no segment was in flight; the workdir keeps its last "
                         "intact checkpoint, at step 100; rerun the same command to resume: "
                         "python -m icsjax.main --workdir=w")


def test_a_save_in_flight_is_waited_for_only_if_it_fits_what_is_left():
  # Exits at once (first segment); a save of 2 s has run 1.5 s: waited for, 5 s at most.
  ckpts = FakeCheckpoints(save_seconds=2.0, running_for=1.5)
  sigterm(Clock(), (range(20, 101, 20), 5.0, ckpts))
  assert ckpts.settled == [5.0]
  for save_seconds, budget in ((2.0, 0.4), (None, 1e6)):  # too long; nothing measured
    ckpts = FakeCheckpoints(save_seconds=save_seconds, running_for=1.5)
    sigterm(Clock(), (range(20, 101, 20), budget, ckpts))
    assert ckpts.settled == [], (save_seconds, budget)


def test_a_segment_that_overruns_the_budget_ends_at_the_deadline():
  """The segment was expected to fit 0.3 s but is still running: the process
  ends 0.3 s (of real time) after the notice, keeping the last checkpoint."""
  stop, ending = sigterm(Clock(), (range(20, 101, 20), 0.3, FakeCheckpoints(0.01, None, 20)),
                         [(20, 0.05)])
  assert stop.finishing and not ending.done.wait(0.15)
  assert ending.done.wait(5)
  assert ending.code == preemption.EXIT_CODE and ending.line == (
      "preempted: the segment in flight and its checkpoint did not end within "
      "preemption_budget_seconds=0.3; the workdir keeps its last intact checkpoint, at step "
      "20; rerun the same command to resume: python -m icsjax.main --workdir=w")


def test_expected_to_fit():
  assert preemption.expected_to_fit(5.0, 3.0, 8.0)  # 5 s left of 8: just fits
  assert not preemption.expected_to_fit(4.9, 3.0, 8.0)
  assert preemption.expected_to_fit(0.0, 9.0, 8.0)  # running late: taken as about to end
  assert not preemption.expected_to_fit(1e9, 0.0, None)  # never measured


def test_the_budget_is_a_checked_field():
  for bad, phrase in ((-1.0, "must be >= 0"), (float("inf"), "must be finite")):
    with pytest.raises(study_lib.ConfigError,
                       match=re.escape(f"config.preemption_budget_seconds={bad!r} {phrase}")):
      study_lib.validate(tiny_config(preemption_budget_seconds=bad))
  study_lib.validate(tiny_config(preemption_budget_seconds=0))
  assert tiny_config().preemption_budget_seconds == 20.0
