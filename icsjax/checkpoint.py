"""Checkpoints of every group's training state (orbax CheckpointManager).

Layout::

  WORKDIR/checkpoints/STEP/GROUP/   one group's state (orbax StandardSave)
  WORKDIR/checkpoints/STEP/meta/    step, config fingerprint, a checksum per group

A group's state is saved as host arrays of its real models only (the padding
that made the model axis divide the devices is dropped), as a plain nested
dict (``flax.serialization.to_state_dict``), so a checkpoint restores on any
device count and loads in a notebook without the training code's classes.

Orbax writes a step into a temporary directory and renames it when complete,
so a kill mid-save leaves no step behind. In a bucket (gs://, written by
tensorstore) orbax renames nothing: it writes the step in place and marks it
complete with a ``commit_success.txt`` written last, and lists only steps
that have one. What a rename cannot catch (a file
truncated or lost afterwards, metadata deleted) the checksum does: a restore
that fails or reads different bytes raises ``CorruptCheckpoint``, and
``restore_latest`` falls back to the step before.

A save runs in a background thread of icsjax's own (training goes on
meanwhile), through orbax's synchronous path: a save that cannot write (an
unwritable directory, a full disk) then raises in that thread at once, where
orbax's asynchronous path would leave its helper threads waiting out a
timeout of minutes for a directory that was never created. The failure
removes the step's temporary directory (a full disk needs the room; in a
bucket the unfinished step, which no listing counts, stays until orbax
clears it before saving that step again), is
handed to ``on_failure`` at once (``icsjax.main`` ends the run with one line)
and raised as ``write_errors.WriteFailed`` by the next ``save`` or ``wait``.

With several processes (icsjax.hosts) the states are gathered from every
process first, and process 0 alone writes them, with an orbax manager whose
only process is itself (so orbax waits on no other); the others read the
shared directory with read-only managers of their own. A checkpoint is
therefore the same files however many processes saved it, and restores on
any number.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np
from flax import serialization

from icsjax import faults
from icsjax import hosts
from icsjax import store
from icsjax import workdir_path
from icsjax import write_errors

CHECKPOINTS = "checkpoints"
META = "meta"
# A save that fails raises at once; this bounds only a save that hangs (a stuck
# filesystem), far above what writing any checkpoint of a study takes.
WAIT_SECONDS = 600.0
# What a run waits, when it stops for another reason, for a save in flight to end.
ABANDON_SECONDS = 5.0


class CorruptCheckpoint(Exception):
  """A checkpoint step that is incomplete, unreadable or not what was saved."""


def fingerprint(config_json: str) -> str:
  """The study's identity (store.study_identity) as a hash: a checkpoint saved
  under a config resumes under any config of the same study."""
  identity = json.dumps(store.study_identity(config_json), sort_keys=True)
  return hashlib.sha256(identity.encode()).hexdigest()


def checksum(tree) -> str:
  """A digest of every leaf's dtype, shape and bytes, in tree order."""
  import jax
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    a = np.ascontiguousarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def directory(workdir):
  return workdir_path.absolute(workdir) / CHECKPOINTS


class Checkpoints:
  """A workdir's checkpoints: save group states at a step, restore the latest good one.

  keep: how many of the newest steps to keep (0: all). async_save: saves run
  in a background thread while training goes on (the next save waits for it).
  on_failure: called, from the saving thread, with the WriteFailed of a save
  that failed, as soon as it fails.

  What a run stopping early needs to know, readable from any thread:
  `intact_step`, the newest step this process saved or restored (None: none);
  `save_seconds`, how long the last completed save took (None: none yet);
  `save_running_for()`, how long the save in flight has run.
  """

  def __init__(self, workdir, keep: int = 0, async_save: bool = True,
               on_failure: Callable[[write_errors.WriteFailed], None] | None = None):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.directory = directory(workdir)
    self.async_save, self.on_failure = async_save, on_failure
    self._pending: tuple[int, threading.Thread, list, float] | None = None
    self.intact_step: int | None = None
    self.save_seconds: float | None = None
    # Several processes: each its own one-process manager; only process 0 writes.
    alone = hosts.count() > 1
    self.writer = not alone or hosts.primary()
    kwargs = dict(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=hosts.index(), active_processes={hosts.index()}),
                  create=False, read_only=not self.writer) if alone else dict(create=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep or None, enable_async_checkpointing=False, **kwargs)
    with write_errors.writing(self.directory):
      if alone and self.writer:
        self.directory.mkdir(parents=True, exist_ok=True)  # orbax's create= cannot, here
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    _quiet_closed_loop_callbacks()

  def steps(self) -> list[int]:
    """Steps whose save completed (orbax lists renamed, finished steps only)."""
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def save(self, step: int, states: dict[str, Any], config_fingerprint: str) -> None:
    """Starts saving {group: host state} at `step`; returns before the write ends
    when saving is asynchronous."""
    trees = {g: serialization.to_state_dict(s) for g, s in states.items()}
    meta = {"step": int(step), "config_fingerprint": config_fingerprint,
            "checksums": {g: checksum(t) for g, t in trees.items()}}
    args = {g: self._ocp.args.StandardSave(t) for g, t in trees.items()}
    args[META] = self._ocp.args.JsonSave(meta)
    self.wait()  # one save at a time; a failed one raises here
    failure: list = []
    started = time.monotonic()
    thread = threading.Thread(target=self._write, name=f"checkpoint-{step}", daemon=True,
                              args=(int(step), self._ocp.args.Composite(**args), failure,
                                    started))
    self._pending = (int(step), thread, failure, started)
    thread.start()
    faults.point("checkpoint_save")  # tests kill here, while the save is being written
    if not self.async_save:
      self.wait()

  def _write(self, step: int, args, failure: list, started: float) -> None:
    """Saves one step (in the saving thread); a failure goes into `failure`."""
    try:
      self.manager.save(step, args=args, force=True)
      if not (self.directory / str(step)).is_dir():  # the save's outcome, checked
        raise FileNotFoundError(f"the save left no directory {self.directory / str(step)}")
    except Exception as e:  # orbax raises OSError, or tensorstore's ValueError quoting one
      for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
        _remove_tree(tmp)
      failure.append(write_errors.WriteFailed(self.directory / str(step), write_errors.reason(e)))
      failure[0].__cause__ = e
      if self.on_failure is not None:
        self.on_failure(failure[0])
      return
    self.save_seconds, self.intact_step = time.monotonic() - started, step
    faults.point("checkpoint_saved")  # tests stop here, the step complete on disk

  def read_meta(self, step: int) -> dict:
    try:  # a damaged step can fail in many ways inside orbax
      return self.manager.restore(
          step, args=self._ocp.args.Composite(**{META: self._ocp.args.JsonRestore()}))[META]
    except Exception as e:  # orbax raises many kinds for a damaged step
      raise CorruptCheckpoint(f"step {step}: metadata unreadable ({type(e).__name__}: "
                              f"{_first_line(e)})") from e

  def read(self, step: int, groups, targets: dict | None = None,
           config_fingerprint: str | None = None) -> dict[str, dict]:
    """{group: nested dict of host arrays} at `step`, checked against the saved
    checksums. targets ({group: state dict}) fix the arrays' structure; without
    them the saved structure is read back as it is."""
    meta = self.read_meta(step)
    if config_fingerprint is not None and meta.get("config_fingerprint") != config_fingerprint:
      raise CorruptCheckpoint(f"step {step} was saved by a different config")
    missing = sorted(set(groups) - set(meta.get("checksums", {})))
    if missing:
      raise CorruptCheckpoint(f"step {step} holds no state of group {missing[0]}")
    restore = self._ocp.args.StandardRestore
    try:
      got = self.manager.restore(step, args=self._ocp.args.Composite(
          **{g: restore(targets[g]) if targets else restore() for g in groups}))
    except Exception as e:  # orbax raises many kinds for a damaged step
      raise CorruptCheckpoint(f"step {step}: state unreadable ({type(e).__name__}: "
                              f"{_first_line(e)})") from e
    out = {g: _as_numpy(got[g]) for g in groups}
    for g, tree in out.items():
      if checksum(tree) != meta["checksums"][g]:
        raise CorruptCheckpoint(f"step {step}: group {g}'s arrays differ from what was saved")
    return out

  def restore(self, step: int, templates: dict[str, Any],
              config_fingerprint: str | None = None) -> dict[str, Any]:
    """{group: host state} at `step`, in the structure of `templates` (host states
    of the same groups); only the groups of `templates` are read."""
    targets = {g: serialization.to_state_dict(t) for g, t in templates.items()}
    trees = self.read(step, list(templates), targets, config_fingerprint)
    return {g: serialization.from_state_dict(templates[g], trees[g]) for g in templates}

  def restore_latest(self, templates: dict[str, Any], config_fingerprint: str,
                     at_most: int | None = None, log: Callable[[str], None] = print):
    """(step, {group: host state}) of the newest step <= at_most that restores
    intact, saying which damaged ones it passed over; (0, None) if none does."""
    return self._newest_intact(lambda s: self.restore(s, templates, config_fingerprint),
                               at_most, log)

  def read_latest(self, groups, log: Callable[[str], None] = print):
    """(step, {group: state dict}) of the newest step that reads intact; (0, None) if none."""
    return self._newest_intact(lambda s: self.read(s, groups), None, log)

  def _newest_intact(self, read, at_most, log):
    for step in reversed(self.steps()):
      if at_most is not None and step > at_most:
        continue
      try:
        found = step, read(step)
        self.intact_step = step
        return found
      except CorruptCheckpoint as e:
        log(f"checkpoint {self.directory / str(step)} is damaged ({e}); "
            f"falling back to the one before")
    return 0, None

  def delete_after(self, step: int) -> None:
    """Deletes the steps after `step`: a resumed run saves them again, and a
    damaged one must not be found first next time."""
    for s in self.steps():
      if s > step:
        self.manager.delete(s)

  def wait(self, seconds: float = WAIT_SECONDS) -> None:
    """Waits for the save in flight; raises WriteFailed if it failed, or did not
    end within `seconds`."""
    if self._pending is None:
      return
    step, thread, failure, _ = self._pending
    thread.join(seconds)
    if thread.is_alive():
      raise write_errors.WriteFailed(self.directory / str(step),
                                     f"the save did not finish within {seconds:.0f} s")
    self._pending = None
    if failure:
      raise failure[0]

  def save_running_for(self) -> float | None:
    """Seconds the save in flight has been writing (None: none is)."""
    pending = self._pending
    return (time.monotonic() - pending[3]) if pending and pending[1].is_alive() else None

  def settle(self, seconds: float) -> None:
    """Gives the save in flight up to `seconds` to end; from any thread, and
    it changes nothing (the main thread's `wait` still reports the outcome)."""
    pending = self._pending
    if pending is not None:
      pending[1].join(max(seconds, 0.0))

  def close(self) -> None:
    self.wait()
    self.manager.close()

  def abandon(self, seconds: float = ABANDON_SECONDS) -> None:
    """For a run that stops for another reason: gives the save in flight
    `seconds` to end (a failure of it is not raised: the run's own is the
    news), then closes when nothing is still writing."""
    try:
      self.wait(seconds)
    except write_errors.WriteFailed:
      if self._pending is not None:
        return  # still writing, in a daemon thread: the process's end abandons it
    self.manager.close()

  # orbax's background machinery must be shut down before the interpreter's.
  def __enter__(self):
    return self

  def __exit__(self, exc_type, *exc):
    if exc_type is None:
      self.close()
    else:
      self.abandon()


def _quiet_closed_loop_callbacks() -> None:
  """When a save fails, orbax closes the event loop of that save while
  tensorstore still holds callbacks for the writes it cancels; each one then
  fails in `call_soon_threadsafe` with 'Event loop is closed', which Python
  prints as an unraisable exception: a dozen tracebacks that add nothing to
  the failure the save reports. Those alone are dropped."""
  previous = sys.unraisablehook
  if getattr(previous, "icsjax_quiet", False):
    return

  def hook(unraisable):
    e, tb = unraisable.exc_value, unraisable.exc_traceback
    last = traceback.extract_tb(tb)[0].name if tb is not None else ""
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
            and last == "call_soon_threadsafe"):
      previous(unraisable)

  hook.icsjax_quiet = True
  sys.unraisablehook = hook


def _remove_tree(path) -> None:
  if workdir_path.in_bucket(path):
    with contextlib.suppress(OSError):
      path.rmtree(missing_ok=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


def _as_numpy(tree):
  import jax
  return jax.tree_util.tree_map(np.asarray, tree)


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [""])[0][:200]
