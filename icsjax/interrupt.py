"""Signals that stop a run, noticed at once, and the one way a run ends early.

Ctrl-C (SIGINT) ends a run at once with exit code 130 and one line saying
how to resume; SIGTERM (a preemption notice) is handed to icsjax.preemption,
which decides whether the segment in flight can still be finished.

Python raises KeyboardInterrupt, or runs a signal handler, only between
bytecodes, so while the main thread waits inside a compiled segment (seconds
to minutes) or inside XLA's compiler a signal would go unnoticed until the
call returns. Instead, CPython's C-level handler writes the signal's number to
a wakeup socket the moment it arrives (``signal.set_wakeup_fd``), and a daemon
thread blocked on that socket runs the signal's callback, whatever the main
thread is doing.

Ending at once (``end_process``) is safe because a run is built to survive
being killed at any moment: record files and checkpoints are written to
temporary names and renamed when whole, and a resumed run starts from the
newest intact checkpoint (tests/test_checkpoint.py kills runs mid-write and
mid-save). A checkpoint save still in flight is abandoned as a kill abandons
it: orbax's temporary directory is never taken for a finished step. The
workdir's lock is a flock, which the kernel releases with the process.

Imports no JAX: ``icsjax.main`` installs it before JAX loads.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Callable, NoReturn

EXIT_CODE = 128 + signal.SIGINT  # the shell's code for a process ended by SIGINT
_sockets: list = []  # kept alive: the wakeup fd must stay open
_ending = threading.Lock()  # held by the one thread that prints the last line and ends the run


def listen(callbacks: dict[int, Callable[[], None]]) -> None:
  """From now on, each signal of `callbacks` runs its callback, in a daemon
  thread, the moment it arrives. Call it once, from the main thread."""
  read, write = socket.socketpair()
  write.setblocking(False)
  _sockets[:] = [read, write]
  for signum in callbacks:
    # A Python-level handler must be set for the C handler to run; it does nothing,
    # so no KeyboardInterrupt is raised: the thread below acts on the signal.
    signal.signal(signum, lambda signum, frame: None)
  signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
  threading.Thread(target=_dispatch, args=(read, callbacks), name="signals",
                   daemon=True).start()


def _dispatch(read: socket.socket, callbacks: dict[int, Callable[[], None]]) -> None:
  while True:
    for signum in read.recv(64):  # the wakeup fd carries every handled signal
      if signum in callbacks:
        callbacks[signum]()


def end_process(line: str, code: int) -> NoReturn:
  """Prints `line` on stderr and ends the process with `code`, from any thread
  and whatever the others are doing. The first caller wins: a second one
  (another thread meeting a failure, a deadline passing) prints nothing and
  waits for the end."""
  if not _ending.acquire(blocking=False):
    threading.Event().wait()  # another thread is ending the process
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  # The progress bar (or the terminal's ^C) may hold the last line: start a fresh one.
  prefix = "\n" if sys.stderr.isatty() or _progress_bar_open() else ""
  # The line is the last word: other threads' writes (a progress bar's refresh,
  # half a traceback from orbax's or tensorstore's threads meeting a failure
  # while the process ends) go to /dev/null from before it is written.
  terminal = os.dup(sys.stderr.fileno())
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
  os.write(terminal, f"{prefix}{line}\n".encode())
  os._exit(code)


def _progress_bar_open() -> bool:
  tqdm = sys.modules.get("tqdm")
  return bool(tqdm is not None and getattr(tqdm.tqdm, "_instances", None))
