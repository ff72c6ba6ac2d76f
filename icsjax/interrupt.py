"""Ctrl-C (SIGINT) ends a run at once, with one line saying how to resume.

Python raises KeyboardInterrupt only between bytecodes, so while the main
thread waits inside a compiled segment (seconds to minutes) or inside XLA's
compiler it would go unnoticed until the call returns, and then unwind as a
traceback from wherever it lands. Instead, CPython's C-level handler writes
the signal to a wakeup socket the moment it arrives (``signal.set_wakeup_fd``),
and a daemon thread blocked on that socket prints the line and ends the
process with exit code 130, whatever the main thread is doing.

Ending at once is safe because a run is built to survive being killed at any
moment: record files and checkpoints are written to temporary names and
renamed when whole, and a resumed run starts from the newest intact
checkpoint (tests/test_checkpoint.py kills runs mid-write and mid-save). A
checkpoint save still in flight is abandoned as a kill abandons it: orbax's
temporary directory is never taken for a finished step. The workdir's lock is
a flock, which the kernel releases with the process.

Imports no JAX: ``icsjax.main`` installs it before JAX loads.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

EXIT_CODE = 128 + signal.SIGINT  # the shell's code for a process ended by SIGINT
_sockets: list = []  # kept alive: the wakeup fd must stay open


def exit_on_sigint(line: str) -> None:
  """From now on, SIGINT prints `line` on stderr and ends this process with
  exit code 130. Call it from the main thread."""
  read, write = socket.socketpair()
  write.setblocking(False)
  _sockets[:] = [read, write]
  # A Python-level handler must be set for the C handler to run; it does nothing,
  # so no KeyboardInterrupt is raised: the thread below ends the process.
  signal.signal(signal.SIGINT, lambda signum, frame: None)
  signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
  threading.Thread(target=_wait_and_exit, args=(read, line), name="sigint", daemon=True).start()


def _wait_and_exit(read: socket.socket, line: str) -> None:
  while signal.SIGINT not in read.recv(64):
    pass  # the wakeup fd carries every handled signal; only SIGINT ends the run
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  # The progress bar (or the terminal's ^C) may hold the last line: start a fresh one.
  prefix = "\n" if sys.stderr.isatty() or _progress_bar_open() else ""
  os.write(sys.stderr.fileno(), f"{prefix}{line}\n".encode())
  os._exit(EXIT_CODE)


def _progress_bar_open() -> bool:
  tqdm = sys.modules.get("tqdm")
  return bool(tqdm is not None and getattr(tqdm.tqdm, "_instances", None))
