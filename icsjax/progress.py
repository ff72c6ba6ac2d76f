"""The progress bar of a run: steps done, model-steps/s and time left."""

from __future__ import annotations

import sys
import time


class Progress:
  """Steps done, model-steps/s and ETA on one line (tqdm)."""

  def __init__(self, total_steps: int, num_models: int, enabled: bool, resumed_at: int = 0):
    self.total, self.models, self.done = total_steps, num_models, 0
    self.t0 = time.perf_counter()
    self.bar = None
    if enabled:
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=resumed_at, unit="step", file=sys.stderr,
                      dynamic_ncols=True)

  def update(self, steps: float):
    self.done += steps  # this process's steps: the rate leaves resumed ones out
    if self.bar is not None:
      rate = self.done * self.models / max(time.perf_counter() - self.t0, 1e-9)
      self.bar.set_postfix_str(f"{rate:,.0f} model-steps/s")
      self.bar.update(steps)

  def close(self):
    if self.bar is not None:
      self.bar.close()
