"""A preemption notice (SIGTERM): save what fits in the grace period, then exit
with EXIT_CODE so that the job is relaunched, not marked failed.

Spot and preemptible VMs (GCE, TPU VMs) and cluster schedulers (SLURM,
Kubernetes) send SIGTERM some 30 s before they kill a process. A run then
either finishes the segment in flight, writes its records, saves a
checkpoint at its end (synchronously, even where no regular checkpoint
falls) and exits; or, when that would not end within
``config.preemption_budget_seconds``, exits at once, keeping the newest
intact checkpoint. Both print one line and exit with EXIT_CODE; rerunning the
same command resumes, and the records come out bitwise identical to an
uninterrupted run's (``runner.resume`` takes any segment boundary's
checkpoint, regular or not).

The decision (``expected_to_fit``) is taken when the notice arrives. The
segment in flight is expected to take as long as the one before it (the
whole segment of every group: training, record transfer and writing); the
checkpoint after it as long as the last completed save, or, before any save
completed, as long as a segment (a stand-in that errs long: a save writes
one state per group, a segment trains and records many steps). When nothing
is measured yet, in this process's first segment (which includes compiling,
of unknown length), the run does not try: it exits at once. So it does when
the run saves no checkpoints (``checkpoint_segments=0``: a rerun starts over
anyway). An estimate can be wrong, so the budget is also a deadline: if the
run is still going ``preemption_budget_seconds`` after the notice, it exits
then, as a kill would (mid-write and mid-save are safe: nothing unfinished
is ever read as complete). A run that exits at once with a save still in
flight (the previous boundary's, written in the background) waits for it if
that is expected to fit the budget's rest, else abandons it.

EXIT_CODE is 75, ``EX_TEMPFAIL`` of BSD's sysexits.h ("a temporary failure;
the user is invited to retry later"), chosen for how SkyPilot managed jobs
(issue 23) tell a preemption from a failure. When the VM is gone, the
controller relaunches the job whatever its exit code (``job_recovery``, not
counted as an error). But a run that exits within the grace period may be
seen before its VM goes down: with the cluster still up, a nonzero exit is a
user-program failure, restarted only ``max_restarts_on_errors`` times
(default 0: the job is marked FAILED), unless its code is listed in
``job_recovery.recover_on_exit_codes``, which always relaunches and is not
counted. The code must therefore be nonzero (0 would mark the job
SUCCEEDED), unlike every other code of icsjax (1 a bug, 2 a mistake, 3 an
unwritable workdir: relaunching those repeats the failure), not 137, which
SkyPilot reserves for itself, and not 128 + a signal's number (143 is what a
process killed by SIGTERM without saving reports): one line,
``recover_on_exit_codes: [75]``, then relaunches exactly the runs that stopped
for a preemption. A Kubernetes Job's ``podFailurePolicy`` (``onExitCodes``)
can match it the same way.

The runner calls a ``Stop`` at each segment boundary and never needs to know
which one it has: ``Never`` (a library call, tests), ``OnSigterm`` (one
process, ``icsjax.main``), ``AtSyncPoint`` (several processes). There JAX's
preemption service, which ``jax.distributed.initialize`` starts, catches
SIGTERM itself (its handler replaces the one ``icsjax.main`` installed
before) and spreads the notice to every process; ``requested(step)``
returns ``multihost_utils.reached_preemption_sync_point(step //
boundaries.step)``: called by every process at every boundary with
consecutive ids, it is True on all of them at the same one (the highest id
any process had reached when the notice spread, plus one), where the runner
saves (process 0), waits at a barrier until the save is on disk, and raises
``Preempted`` on every process. JAX picks that
boundary by step, not by time, so the budget does not apply there.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

from icsjax import interrupt

EXIT_CODE = 75  # EX_TEMPFAIL: preempted, relaunch to resume (README, "Exit codes")
FIELD = "preemption_budget_seconds"


class Preempted(Exception):
  """Raised by the runner at the segment boundary a stop was requested at,
  once the checkpoint of that `step` is on disk (checkpointed False: the run
  saves no checkpoints)."""

  def __init__(self, step: int, checkpointed: bool = True):
    self.step, self.checkpointed = step, checkpointed
    super().__init__(f"preempted at step {step}")


class Stop(Protocol):
  """What the runner asks at segment boundaries."""

  def begin(self, boundaries: range, budget: float, checkpoints) -> None:
    """The run is about to train the segments ending at `boundaries` (empty
    when the study is done); checkpoints: its checkpoint.Checkpoints, or None."""

  def requested(self, step: int) -> bool:
    """Called at every boundary, in order, once its records are written: True
    when the run must save a checkpoint at `step` and raise Preempted."""


class Never:
  """No stop is ever requested (a run called as a library)."""

  def begin(self, boundaries: range, budget: float, checkpoints) -> None:
    pass

  def requested(self, step: int) -> bool:
    return False


class AtSyncPoint:
  """Several processes (icsjax.hosts): JAX's preemption service, started by
  jax.distributed.initialize, catches SIGTERM on any process and spreads the
  notice; `requested` asks it at every boundary, with the boundary's segment
  number as the consecutive id it wants, and it answers True on every process
  at the same boundary. JAX picks that boundary by step, not by time, so the
  budget does not apply here: a platform that kills sooner than a segment
  takes leaves the last intact checkpoint, as any kill does."""

  def __init__(self, command: str):
    self.command = command
    self._segment_steps = 1

  def begin(self, boundaries: range, budget: float, checkpoints) -> None:
    del budget, checkpoints
    self._segment_steps = boundaries.step

  def requested(self, step: int) -> bool:
    from jax.experimental import multihost_utils
    return bool(multihost_utils.reached_preemption_sync_point(step // self._segment_steps))


def expected_to_fit(budget_left: float, running_for: float, estimate: float | None) -> bool:
  """Whether work estimated to take `estimate` seconds in all, which has run
  for `running_for`, is expected to end within `budget_left` seconds. Work
  with no estimate is not. Work running past its estimate is taken to be
  about to end; the deadline bounds a wrong guess."""
  if estimate is None:
    return False
  return max(estimate - running_for, 0.0) <= budget_left


def saved_line(step: int, command: str) -> str:
  return (f"preempted: saved a checkpoint at step {step}; rerun the same command to resume "
          f"from it: {command}")


def kept_line(why: str, held: str, command: str) -> str:
  return f"preempted: {why}; {held}; rerun the same command to resume: {command}"


def stopped_line(e: Preempted, command: str) -> str:
  """The last line of a run that stopped at a boundary (raised `e`)."""
  if e.checkpointed:
    return saved_line(e.step, command)
  return kept_line(f"stopped at step {e.step}", "this run saves no checkpoints "
                   "(checkpoint_segments=0): the rerun starts over from step 0", command)


class OnSigterm:
  """One process: SIGTERM (``notice``, from icsjax.interrupt's thread) either
  lets the segment in flight finish, so that `requested` is True at its end,
  or ends the process at once; in both cases within the budget.

  command: the command line that resumes the run, for the last line.
  clock, end: time.monotonic and interrupt.end_process, replaceable in tests.
  """

  def __init__(self, command: str, clock: Callable[[], float] = time.monotonic,
               end: Callable[[str, int], None] = interrupt.end_process):
    self.command, self._clock, self._end = command, clock, end
    self._lock = threading.Lock()
    self._begun = False
    self.budget: float | None = None
    self._checkpoints = None
    self._last_boundary: int | None = None
    self._segment_started: float | None = None  # of the segment in flight; None: none is
    self._last_segment: float | None = None  # seconds the segment before it took
    self._notice: float | None = None
    self._finishing = False

  @property
  def finishing(self) -> bool:
    """A notice came, and the segment in flight is being finished."""
    return self._finishing

  def begin(self, boundaries: range, budget: float, checkpoints) -> None:
    with self._lock:
      self._begun, self.budget, self._checkpoints = True, float(budget), checkpoints
      self._last_boundary = boundaries[-1] if boundaries else None
      self._segment_started = self._clock() if boundaries else None

  def requested(self, step: int) -> bool:
    now = self._clock()
    with self._lock:
      if self._segment_started is not None:
        self._last_segment = now - self._segment_started
      self._segment_started = None if step == self._last_boundary else now
      return self._finishing

  def notice(self) -> None:
    """SIGTERM arrived: decides, then waits and ends the process in a thread of
    its own (the signal thread stays free for Ctrl-C). A second notice changes
    nothing: the first one's deadline holds."""
    with self._lock:
      if self._notice is not None:
        return
      self._notice = self._clock()
      self._finishing, why = self.decide(self._notice)
    threading.Thread(target=self._deadline if self._finishing else self._end_now, args=(why,),
                     name="preemption", daemon=True).start()

  def decide(self, now: float) -> tuple[bool, str]:
    """(finish the segment in flight, why not) for a notice at `now`; call with
    the lock held."""
    if not self._begun or self._segment_started is None:
      return False, "no segment was in flight"
    if self._checkpoints is None:
      return False, "this run saves no checkpoints (checkpoint_segments=0)"
    if self._last_segment is None:
      return False, ("the segment in flight is this run's first, whose time (compiling "
                     "included) is not known yet")
    save = self._checkpoints.save_seconds
    estimate = self._last_segment + (self._last_segment if save is None else save)
    running_for = now - self._segment_started
    if expected_to_fit(self.budget, running_for, estimate):
      return True, ""
    return False, (f"finishing the segment in flight and saving it would take about "
                   f"{estimate - running_for:.0f} s, more than {FIELD}={self.budget:g}")

  def held(self) -> str:
    """What the workdir keeps, in words."""
    if not self._begun:
      return "the workdir keeps its last intact checkpoint"
    step = None if self._checkpoints is None else self._checkpoints.intact_step
    if not step:
      return "the workdir holds no checkpoint: the rerun starts over from step 0"
    return f"the workdir keeps its last intact checkpoint, at step {step}"

  def _deadline(self, why: str) -> None:
    """The segment is finishing; if the run is still going when the budget is
    spent, it ends here (a Preempted reaching icsjax.main ends it sooner)."""
    time.sleep(max(self._notice + self.budget - self._clock(), 0.0))
    self._end(kept_line(f"the segment in flight and its checkpoint did not end within "
                        f"{FIELD}={self.budget:g}", self.held(), self.command), EXIT_CODE)

  def _end_now(self, why: str) -> None:
    """Ends the process, after the save in flight if that is expected to fit."""
    checkpoints = self._checkpoints if self._begun else None
    running_for = None if checkpoints is None else checkpoints.save_running_for()
    if running_for is not None:
      left = self.budget - (self._clock() - self._notice)
      if expected_to_fit(left, running_for, checkpoints.save_seconds):
        checkpoints.settle(left)
    self._end(kept_line(why, self.held(), self.command), EXIT_CODE)
