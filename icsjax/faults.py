"""A test hook that kills this process at a named point of a run.

Crash safety is only believable when tested at the worst moments: halfway
through writing a record file, or while a checkpoint is being saved. With
``ICSJAX_KILL_AT=POINT:N`` in the environment, the N-th time (from 1) the run
reaches ``point(POINT)`` the process gets SIGKILL, which nothing can catch or
clean up after; ``POINT:N:INT`` sends SIGINT instead (Ctrl-C at that moment),
``POINT:N:TERM`` SIGTERM (a preemption notice at that moment). A signal the
run handles is acted on in another thread (icsjax.interrupt; with several
processes, JAX's preemption notifier, which looks for a SIGTERM once a
second), so the point then holds the process for ``HOLD_SECONDS`` of that
signal: the handler acts while the run is still there, not a few steps later
(or, with warm compilation caches, after the last boundary).
``POINT:N:STOP`` stops the process (SIGSTOP) there, for a test to change the
workdir under it (make a directory unwritable, fill the disk) before it
sends SIGCONT. ``checkpoint_saved`` is reached in the saving thread once a
step is complete on disk; ``run_start`` once the workdir is checked, before
the data loads (a process of a run of several that hangs there leaves the
others waiting in their first collective).
Unset, a point costs one environment lookup.
"""

import os
import signal
import time

ENV = "ICSJAX_KILL_AT"
POINTS = ("run_start", "record_write", "checkpoint_save", "checkpoint_saved", "after_segment")
HANDLED = (signal.SIGINT, signal.SIGTERM)
HOLD_SECONDS = {signal.SIGINT: 0.5, signal.SIGTERM: 1.5}
_reached: dict[str, int] = {}


def point(name: str) -> None:
  spec = os.environ.get(ENV)
  if not spec:
    return
  target, _, rest = spec.partition(":")
  if target != name:
    return
  nth, _, sig = rest.partition(":")
  _reached[name] = _reached.get(name, 0) + 1
  if _reached[name] == int(nth or 1):
    signum = getattr(signal, f"SIG{sig or 'KILL'}")
    os.kill(os.getpid(), signum)
    if signum in HANDLED:
      time.sleep(HOLD_SECONDS[signum])
