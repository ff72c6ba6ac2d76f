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

flock over NFS is not reliable. A bucket workdir (gs://...) has no flock at
all; there the lock is the object WORKDIR/run.lock itself, created only if
absent (Cloud Storage's precondition ``ifGenerationMatch=0``, gcsfs's
``mode="create"``), so of two runs starting at once one creates it and the
other is refused. The holder writes its host, pid, start time and a
heartbeat time into it, rewrites the heartbeat every ``HEARTBEAT_SECONDS``
from a background thread, and deletes the object when it ends. A run that
died without deleting it (killed, preempted) leaves it behind: that object
is stale, and taken over, once its heartbeat is older than
``STALE_SECONDS``, or at once when its holder ran on this same host and its
pid is no longer alive. Hosts' clocks are assumed to agree to well within
``STALE_SECONDS`` (NTP), and a holder stuck for longer than that (its
heartbeat thread starved) can lose the lock to another run.

Imports no JAX: ``icsjax.main`` takes the lock before JAX starts.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
import time

from icsjax import workdir_path
from icsjax import write_errors

LOCK_FILE = "run.lock"
# Written by process 0 of a run of several, read by the others, then deleted
# (icsjax.hosts.check_shared_workdir); like the lock, no study's file.
SHARED_MARKER = "hosts_marker"
RETRY_SECONDS = 2.0
_RETRY_EVERY = 0.05
# A bucket lock: how often its holder refreshes its heartbeat, and how old a
# heartbeat may be before the lock counts as a dead run's.
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0

# Workdirs this process holds: {absolute path: [fd or BucketLock, depth, created by this hold]}. A process may enter
# `hold` again for a workdir it holds (icsjax.main around runner.run, which locks
# too); a second flock of its own would refuse it.
_held: dict = {}


class WorkdirError(Exception):
  """A workdir a run cannot use; the message names it and what to do instead."""


class WorkdirBusy(WorkdirError):
  """Another live run holds the workdir's lock."""


def lock_path(workdir):
  return workdir_path.path(workdir) / LOCK_FILE


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
  workdir = workdir_path.path(workdir)
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


def _holder_info() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _write_holder(fd: int) -> None:
  info = _holder_info()
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode(), 0)


@contextlib.contextmanager
def hold(workdir, retry_seconds: float = RETRY_SECONDS):
  """Holds WORKDIR's lock inside the block (creating the workdir); raises
  WorkdirBusy naming the holder when another live run has it, WorkdirError when
  the workdir is a file or cannot be written."""
  key = workdir_path.absolute(workdir)
  if key in _held:
    _held[key][1] += 1
  elif workdir_path.in_bucket(key):
    _held[key] = [BucketLock.take(key), 1, False]
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
    if not _held[key][1] and workdir_path.in_bucket(key):
      _held.pop(key)[0].release()
    elif not _held[key][1]:
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
  if workdir_path.absolute(workdir) in _held:
    return None  # this process: its own report of the run it just finished
  if workdir_path.in_bucket(workdir):
    holder = BucketLock.read(lock_path(workdir))
    return holder if holder and _alive(holder) else None
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


def _alive(holder: dict) -> bool:
  """Whether a bucket lock's holder counts as running: its heartbeat is recent,
  and, when it ran on this host, its pid still exists."""
  if time.time() - float(holder.get("heartbeat", 0)) > STALE_SECONDS:
    return False
  if holder.get("host") == socket.gethostname():
    try:
      os.kill(int(holder.get("pid", 0)), 0)
    except ProcessLookupError:
      return False
    except (PermissionError, ValueError):
      pass  # another user's process: alive
  return True


class BucketLock:
  """A workdir lock in a bucket: the lock object, created only if absent, whose
  heartbeat a background thread refreshes until `release` deletes it."""

  def __init__(self, path, info: dict):
    self.path, self.info = path, info
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat",
                                    daemon=True)

  @classmethod
  def take(cls, workdir) -> "BucketLock":
    """Creates the lock object, taking over a dead run's; raises WorkdirBusy
    naming the holder when a live run has it."""
    path = lock_path(workdir)
    info = {**_holder_info(), "heartbeat": time.time()}
    for _ in range(3):  # a stale lock taken over, or a race lost to a run that then ended
      holder = cls.read(path)
      if holder and _alive(holder):
        raise WorkdirBusy(f"--workdir={workdir} is in use by another run "
                          f"({holder_text(holder)}, last heard of "
                          f"{time.time() - float(holder['heartbeat']):.0f} s ago); wait for it "
                          f"to end, or stop it, then rerun")
      with write_errors.writing(path):
        if holder:
          path.unlink(missing_ok=True)  # a dead run's
        fs, name = workdir_path.filesystem(path)
        try:
          fs.pipe_file(name, json.dumps(info).encode(), mode="create")
        except FileExistsError:  # another run created it between the read and here
          continue
      lock = cls(path, info)
      lock._thread.start()
      return lock
    raise WorkdirBusy(f"--workdir={workdir} is being taken by other runs at the same time; "
                      f"start one run per workdir")

  @staticmethod
  def read(path) -> dict:
    """The holder record of the lock object ({} when there is none, or unreadable)."""
    try:
      text = path.read_text()
      return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
      return {}

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      self.info["heartbeat"] = time.time()
      with contextlib.suppress(OSError):  # a missed beat is retried; STALE_SECONDS allows several
        self.path.write_text(json.dumps(self.info))

  def release(self) -> None:
    self._stop.set()
    self._thread.join()
    with contextlib.suppress(OSError):
      self.path.unlink(missing_ok=True)
