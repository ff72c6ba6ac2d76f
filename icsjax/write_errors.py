"""A write to the workdir that fails stops the run at once, in one line.

Records, checkpoints, the summary and the report are all written into the
workdir; when one of those writes fails (a directory made unwritable, a full
disk) the run cannot go on usefully, and waiting helps nothing. Every write
path turns the OS error into ``WriteFailed``, naming the path and the error;
``icsjax.main`` prints it as one line and ends with ``EXIT_CODE``.

A checkpoint save fails in a background thread while the main thread is
inside a compiled segment, where an exception would wait for the call to
return (seconds to minutes). ``exit_at_once`` therefore ends the process from
whichever thread finds the failure, as Ctrl-C does (icsjax.interrupt): every
file of a run is written to a temporary name and renamed when whole, so ending
mid-write leaves the newest finished segment and checkpoint intact, and the
same command resumes from them.

At the start, ``check_free_space`` refuses a run whose workdir's filesystem
has clearly too little room for it (less than the bytes of its records and
kept checkpoints), before any segment runs. A bucket workdir is not checked:
an object store reports no free space (its limits are quotas and billing).

Imports no JAX: ``icsjax.main`` and ``icsjax.store`` import it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil

from icsjax import interrupt

from icsjax import workdir_path

EXIT_CODE = 3  # README, "Exit codes": the workdir could not be written
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")  # how tensorstore (orbax) reports one


class WriteFailed(Exception):
  """A file or directory of the workdir could not be written."""

  def __init__(self, path, reason: str):
    self.path, self.reason = workdir_path.path(path), reason
    super().__init__(f"could not write {path}: {reason}")


class NotEnoughSpace(WriteFailed):
  """The workdir's filesystem has clearly too little free space for the run."""

  def __init__(self, path, free: int, needed: int, what: str):
    self.path, self.free, self.needed = workdir_path.path(path), free, needed
    self.reason = f"{megabytes(free)} free, the run needs at least {megabytes(needed)}"
    Exception.__init__(self, f"--workdir={path} has {megabytes(free)} free, but this run needs "
                       f"at least {megabytes(needed)} ({what}); free some space or choose "
                       f"another --workdir")


def megabytes(n: int) -> str:
  return f"{n / 2**20:.2f} MB"


def reason(e: BaseException) -> str:
  """The OS error behind `e` in words ('No space left on device'), from an OSError
  or an error that quotes one's code (tensorstore's), else its first line."""
  while e is not None:
    if isinstance(e, OSError) and e.errno is not None:
      return f"{os.strerror(e.errno)} (errno {errno.errorcode.get(e.errno, e.errno)})"
    code = _OS_ERROR_CODE.search(str(e))
    if code:
      n = int(code.group(1))
      return f"{os.strerror(n)} (errno {errno.errorcode.get(n, n)})"
    if e.__cause__ is None and e.__context__ is None:
      return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    e = e.__cause__ or e.__context__
  return "unknown error"


@contextlib.contextmanager
def writing(path):
  """Inside the block, an OSError, or an error of the Cloud Storage client, becomes
  WriteFailed naming `path`."""
  try:
    yield
  except Exception as e:
    if not isinstance(e, OSError) and not _bucket_client_error(e):
      raise
    raise WriteFailed(path, reason(e)) from e


def _bucket_client_error(e: Exception) -> bool:
  """gcsfs maps a refused request to an OSError (403 Forbidden, 404), but raises
  its own HttpError for the rest (a 5xx after its retries, 401 unauthorised)."""
  return type(e).__module__.startswith("gcsfs.")


def line(e: WriteFailed) -> str:
  """The one line a run that could not write its workdir ends with."""
  if isinstance(e, NotEnoughSpace):
    return f"error: {e}"
  return (f"error: {e}; the workdir keeps its last intact checkpoint: make room or make it "
          f"writable, then rerun the same command to resume from it")


def exit_at_once(e: WriteFailed) -> None:
  """Prints `line(e)` on stderr and ends the process with EXIT_CODE, from any
  thread and whatever the others are doing; a second failure found meanwhile
  prints nothing."""
  interrupt.end_process(line(e), EXIT_CODE)


def check_free_space(workdir, needed: int, what: str) -> None:
  """Raises NotEnoughSpace when the filesystem of `workdir` (an existing
  directory) has fewer than `needed` bytes free; checks nothing in a bucket."""
  if workdir_path.in_bucket(workdir):
    return
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise NotEnoughSpace(workdir, free, needed, what)


def bytes_under(path) -> int:
  """Bytes of the files under local `path` (0 when it does not exist)."""
  return sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(path) for name in names)
