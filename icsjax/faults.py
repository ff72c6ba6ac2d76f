"""A test hook that kills this process at a named point of a run.

Crash safety is only believable when tested at the worst moments: halfway
through writing a record file, or while a checkpoint is being saved. With
``ICSJAX_KILL_AT=POINT:N`` in the environment, the N-th time (from 1) the run
reaches ``point(POINT)`` the process gets SIGKILL, which nothing can catch or
clean up after; ``POINT:N:INT`` sends SIGINT instead (Ctrl-C at that moment).
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

ENV = "ICSJAX_KILL_AT"
POINTS = ("run_start", "record_write", "checkpoint_save", "checkpoint_saved", "after_segment")
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
    os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}"))
