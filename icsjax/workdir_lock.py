"""One run per workdir: an exclusive lock on WORKDIR/run.lock for the run's life.

Two runs writing one workdir corrupt it (each truncates and rewrites the
other's records and checkpoints), so a run takes ``fcntl.flock(LOCK_EX)`` on
the lock file before it writes anything and holds it until it exits. The
kernel releases a flock when its holder's process ends, however it ends
(SIGKILL included), so a lock is never stale: a file left by a dead run locks
nothing. The holder writes its host, pid and start time into the file, for
the refusal message and for readers.

Readers (``icsjax.analysis.load``, the report) never take the lock; they ask
``live_holder`` whether a run holds it. That asks with a shared, non-blocking
flock released at once, which for an instant can make a starting run find the
file locked; a run therefore retries for ``RETRY_SECONDS`` before it gives up.

Local filesystems only: flock over NFS is not reliable, and bucket workdirs
have no flock at all.

Imports no JAX: ``icsjax.main`` takes the lock before JAX starts.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import time

from icsjax import write_errors

LOCK_FILE = "run.lock"
# Written by process 0 of a run of several, read by the others, then deleted
# (icsjax.hosts.check_shared_workdir); like the lock, no study's file.
SHARED_MARKER = "hosts_marker"
RETRY_SECONDS = 2.0
_RETRY_EVERY = 0.05

# Workdirs this process holds: {absolute path: [fd, depth, created by this hold]}. A process may enter
# `hold` again for a workdir it holds (icsjax.main around runner.run, which locks
# too); a second flock of its own would refuse it.
_held: dict[pathlib.Path, list] = {}


class WorkdirError(Exception):
  """A workdir a run cannot use; the message names it and what to do instead."""


class WorkdirBusy(WorkdirError):
  """Another live run holds the workdir's lock."""


def lock_path(workdir) -> pathlib.Path:
  return pathlib.Path(workdir) / LOCK_FILE


def holder_text(info: dict) -> str:
  """'host H, pid P, started T' of a holder's record ({} when it wrote none yet)."""
  if not info:
    return "a process that has not yet said who it is"
  return (f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, "
          f"started {info.get('started', '?')}")


def _read_holder(fd: int) -> dict:
  try:
    text = os.pread(fd, 4096, 0).decode()
    return json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {}


def _open_for_run(workdir) -> int:
  """The lock file's fd, creating the workdir; a WorkdirError when it cannot be."""
  workdir = pathlib.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"--workdir={workdir} is a file; give a directory (a new one, or "
                       f"one holding this study to resume it)")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    return os.open(lock_path(workdir), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    what = "is not writable" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) \
        else "cannot be used"
    raise WorkdirError(f"--workdir={workdir} {what} ({e.strerror}); give a directory "
                       f"this user can write") from None


def _acquire(fd: int, workdir, retry_seconds: float) -> None:
  deadline = time.monotonic() + retry_seconds
  while True:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return
    except BlockingIOError:
      if time.monotonic() >= deadline:
        holder = _read_holder(fd)
        raise WorkdirBusy(f"--workdir={workdir} is in use by another run ({holder_text(holder)});"
                          f" wait for it to end, or stop it, then rerun") from None
      time.sleep(_RETRY_EVERY)


def _write_holder(fd: int) -> None:
  info = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode(), 0)


@contextlib.contextmanager
def hold(workdir, retry_seconds: float = RETRY_SECONDS):
  """Holds WORKDIR's lock inside the block (creating the workdir); raises
  WorkdirBusy naming the holder when another live run has it, WorkdirError when
  the workdir is a file or cannot be written."""
  key = pathlib.Path(workdir).absolute()
  if key in _held:
    _held[key][1] += 1
  else:
    created = not key.exists()
    fd = _open_for_run(workdir)
    try:
      _acquire(fd, workdir, retry_seconds)
      with write_errors.writing(lock_path(workdir)):  # a full disk fails here first
        _write_holder(fd)
    except BaseException:
      os.close(fd)
      raise
    _held[key] = [fd, 1, created]
  try:
    yield
  finally:
    _held[key][1] -= 1
    if not _held[key][1]:
      fd, _, created = _held.pop(key)
      if created and [p.name for p in key.iterdir()] == [LOCK_FILE]:
        # A run refused before it wrote anything (e.g. its data is not prepared)
        # leaves no empty workdir behind.
        lock_path(key).unlink()
        with contextlib.suppress(OSError):
          key.rmdir()
      os.close(fd)  # releases the flock; the file stays, locking nothing


def live_holder(workdir) -> dict | None:
  """The record (host, pid, started) of the live run holding WORKDIR's lock, or
  None when no other process holds it. Never takes the lock for longer than
  the asking."""
  if pathlib.Path(workdir).absolute() in _held:
    return None  # this process: its own report of the run it just finished
  try:
    fd = os.open(lock_path(workdir), os.O_RDONLY)
  except OSError:
    return None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return _read_holder(fd)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)
