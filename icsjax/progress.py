"""The progress bar of a run: whole steps done, model-steps/s and time left, and
a line when each group compiles."""

from __future__ import annotations

import sys
import time


class Progress:
  """Steps done, model-steps/s and ETA on one line (tqdm).

  The groups of a study train one after another, segment by segment; the bar
  counts the steps trained averaged over the groups, rounded down to a whole
  step (3 groups, one of them 20 steps further: 6 steps, not 6.67). The first call of a group's
  compiled loop in a process compiles it (seconds to a minute), so the bar
  says which group is compiling before the call and how long it took after.
  """

  def __init__(self, total_steps: int, num_groups: int, num_models: int, enabled: bool,
               resumed_at: int = 0, file=None):
    self.total, self.groups, self.models = total_steps, num_groups, num_models
    self.group_steps = 0  # steps trained in this process, summed over groups
    self.t0 = time.perf_counter()
    self.compile_started, self.compiling_group = 0.0, None
    self.bar = None
    if enabled:
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=resumed_at, unit="step",
                      file=file or sys.stderr, dynamic_ncols=True)

  @property
  def done(self) -> int:
    """Whole steps this process trained, averaged over the groups."""
    return self.group_steps // self.groups

  def group_done(self, steps: int):
    """One group trained `steps` more steps."""
    before = self.done
    self.group_steps += steps
    if self.bar is not None and self.done > before:
      rate = self.done * self.models / max(time.perf_counter() - self.t0, 1e-9)
      self.bar.set_postfix_str(f"{rate:,.0f} model-steps/s")
      self.bar.update(self.done - before)

  def compiling(self, group: str):
    """Group `group`'s loop is about to be called, and compiled, for the first time."""
    self.compile_started, self.compiling_group = time.perf_counter(), group
    self._say(f"compiling group {group}...")

  def compiled(self):
    """The call `compiling` announced has returned: it is compiled."""
    seconds = time.perf_counter() - self.compile_started
    self._say(f"compiled group {self.compiling_group} in {seconds:.1f} s")

  def _say(self, line: str):
    if self.bar is not None:
      self.bar.write(line, file=self.bar.fp)

  def close(self):
    if self.bar is not None:
      self.bar.close()
