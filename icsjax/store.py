"""The workdir: metadata, and record arrays appended once per segment.

Layout::

  WORKDIR/config.json            the resolved config
  WORKDIR/grid.json              groups, their static values, model ids and coordinates
  WORKDIR/versions.json          library versions and devices
  WORKDIR/records/GROUP/schema.json         variable -> named dims; fixed coordinates
  WORKDIR/records/GROUP/segment_NNNNNN.npz  one file per finished segment
  WORKDIR/checkpoints/STEP/                 training state (icsjax.checkpoint)
  WORKDIR/tensorboard/GROUP/                live metrics: TensorBoard event files (icsjax.live_metrics)
  WORKDIR/run.lock               held by the run writing the workdir (icsjax.workdir_lock)

A segment file is written to a temporary name and renamed, so it is either
whole or absent; truncating a run back to step S is deleting the segment
files that end after S. Loading concatenates segments along each
variable's time axis (step, record_step, eval_step, ...), as schema.json says.

In a bucket (``--workdir=gs://...``, icsjax.workdir_path) there is no atomic
rename, so "a half-written segment is never read as complete" rests on two
things instead. Each file is uploaded whole from memory in one upload (Cloud
Storage makes an object visible only once its upload is complete, so a
killed upload leaves no object, never a short one). And a segment counts only
once its commit marker ``segment_NNNNNN.npz.commit`` exists, written after the
segment object: a segment object without its marker (a run killed between
the two, or a store that shows objects early) is not read, and a resumed run
deletes it with the segments after its checkpoint. Nothing is fsynced
(an upload that returned is durable) and no temporary files are left.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
from typing import Any

import numpy as np

from icsjax import faults
from icsjax import workdir_path
from icsjax import write_errors
from icsjax.workdir_lock import LOCK_FILE, SHARED_MARKER

RECORDS = "records"
SEGMENT_RE = re.compile(r"segment_(\d{6})\.npz$")
COMMIT = ".commit"  # a bucket segment's marker: segment_NNNNNN.npz.commit, written after it
COMMIT_RE = re.compile(r"segment_(\d{6})\.npz\.commit$")


def write_atomic(path, write, kill_point: str = "") -> None:
  """Calls write(file) on a temporary file, syncs it, then renames it to path;
  in a bucket, uploads the bytes whole in one upload instead.

  kill_point names a faults.point reached halfway through the bytes (in a
  bucket: once the object is uploaded), so tests can kill a run mid-write. An
  OS error (an unwritable directory, a full disk) raises
  write_errors.WriteFailed naming `path`, after removing the temporary file,
  which a full disk needs back."""
  path = workdir_path.path(path)
  buf = io.BytesIO()
  write(buf)
  data = buf.getbuffer()
  if workdir_path.in_bucket(path):
    with write_errors.writing(path):
      path.write_bytes(bytes(data))
    if kill_point:
      faults.point(kill_point)
    return
  tmp = path.with_name(path.name + ".tmp")
  try:
    with write_errors.writing(path):
      with open(tmp, "wb") as f:
        f.write(data[:len(data) // 2])
        if kill_point:
          f.flush()
          faults.point(kill_point)
        f.write(data[len(data) // 2:])
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
  except write_errors.WriteFailed:
    with contextlib.suppress(OSError):
      tmp.unlink()
    raise


def write_json(path, obj: Any) -> None:
  write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1, default=_jsonable).encode()))


def _jsonable(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, tuple):
    return list(x)
  raise TypeError(f"not JSON serialisable: {type(x)}")


def group_dir(workdir, group: str) -> workdir_path.epath.Path:
  return workdir_path.path(workdir) / RECORDS / group


def write_schema(workdir, group: str, schema: dict) -> None:
  d = group_dir(workdir, group)
  with write_errors.writing(d):
    d.mkdir(parents=True, exist_ok=True)
  write_json(d / "schema.json", schema)


def make_schema(variables: dict, fixed_coords: dict, attrs: dict) -> dict:
  """Each variable's named dims, the coordinates fixed for the run, and attributes
  that say how the records were measured: all a reader needs (icsjax.records
  makes them; loading needs nothing but the workdir)."""
  return {"variables": variables, "coords": fixed_coords, "attrs": attrs}


def write_segment(workdir, group: str, index: int, records: dict,
                  time_coords: dict[str, np.ndarray]):
  """Writes one segment's records ({kind: {name: array}}) as one atomic file (in a
  bucket: one upload, then its commit marker)."""
  arrays = {name: np.asarray(a) for tree in records.values() for name, a in tree.items()}
  arrays.update({axis: np.asarray(v) for axis, v in time_coords.items()})
  path = group_dir(workdir, group) / f"segment_{index:06d}.npz"
  write_atomic(path, lambda f: np.savez(f, **arrays), kill_point="record_write")
  if workdir_path.in_bucket(path):
    write_atomic(commit_marker(path), lambda f: f.write(b""))
  return path


def commit_marker(segment):
  return segment.with_name(segment.name + COMMIT)


def segment_paths(workdir, group: str) -> list:
  """The group's finished segment files, in order (in a bucket: those with a commit marker)."""
  d = group_dir(workdir, group)
  found = sorted(p for p in d.glob("segment_*.npz") if SEGMENT_RE.search(p.name))
  if not workdir_path.in_bucket(d):
    return found
  committed = {p.name for p in d.glob(f"segment_*.npz{COMMIT}")}
  return [p for p in found if p.name + COMMIT in committed]


def complete_segments(workdir, group: str) -> int:
  """How many segments from the first on are written without a gap."""
  present = {int(SEGMENT_RE.search(p.name).group(1)) for p in segment_paths(workdir, group)}
  n = 0
  while n in present:
    n += 1
  return n


def truncate(workdir, group: str, keep_segments: int) -> None:
  """Deletes segment files from index keep_segments on (resume after a crash); in
  a bucket, their commit markers too, and any segment object without one."""
  d = group_dir(workdir, group)
  if workdir_path.in_bucket(d):
    committed = segment_paths(workdir, group)
    for p in d.glob("segment_*"):
      index = SEGMENT_RE.search(p.name) or COMMIT_RE.search(p.name)
      if index and (int(index.group(1)) >= keep_segments
                    or (SEGMENT_RE.search(p.name) and p not in committed)):
        p.unlink()
    return
  for p in segment_paths(workdir, group):
    if int(SEGMENT_RE.search(p.name).group(1)) >= keep_segments:
      p.unlink()
  for p in d.glob("*.tmp"):
    p.unlink()


class NoRecords(FileNotFoundError):
  """A workdir with no finished segment to read (or no study at all)."""


def started_groups(workdir) -> list[str]:
  """The groups of a workdir's study with at least one finished segment, in grid order.
  Raises NoRecords, in one line, when the workdir holds no study or no group has one."""
  workdir = workdir_path.path(workdir)
  grid_path = workdir / "grid.json"
  if not grid_path.exists():
    raise NoRecords(f"{workdir} holds no icsjax study (no grid.json): "
                    f"the --workdir of a `python -m icsjax.main` run")
  names = [g["name"] for g in read_json(grid_path)["groups"]]
  started = [g for g in names if segment_paths(workdir, g)]
  if not started:
    seg = read_json(workdir / "config.json").get("segment_steps", "?")
    raise NoRecords(f"{workdir} holds no finished segment yet: its run stopped (or is still "
                    f"running) before step {seg}, the end of the first segment; rerun its "
                    f"command to resume it")
  return started


def read_json(path) -> Any:
  return json.loads(workdir_path.path(path).read_text())


def load_arrays(workdir, group: str) -> tuple[dict[str, np.ndarray], dict]:
  """Every variable of a group, concatenated over segments; and the schema."""
  schema = read_json(group_dir(workdir, group) / "schema.json")
  parts: dict[str, list] = {}
  for p in segment_paths(workdir, group):
    with np.load(io.BytesIO(p.read_bytes()) if workdir_path.in_bucket(p) else p) as z:
      for k in z.files:
        parts.setdefault(k, []).append(z[k])
  out = {}
  for name, chunks in parts.items():
    dims = schema["variables"].get(name)
    if dims is None:  # a time coordinate
      out[name] = np.concatenate(chunks)
    elif list(dims) == ["model"]:  # a per-model value: the latest segment's holds
      out[name] = chunks[-1]
    else:
      out[name] = np.concatenate(chunks, axis=1)
  return out, schema


def load_group(workdir, group: str):
  """One group's records as an xarray.Dataset with named dims and model coordinates."""
  import xarray as xr
  arrays, schema = load_arrays(workdir, group)
  grid = read_json(workdir_path.path(workdir) / "grid.json")
  g = next(g for g in grid["groups"] if g["name"] == group)
  # The arrays that are not variables are the time axes' steps.
  coords = {axis: v for axis, v in arrays.items() if axis not in schema["variables"]}
  coords.update({k: (tuple(dims), np.asarray(v)) for k, (dims, v) in schema["coords"].items()})
  coords["model"] = np.asarray(g["model_ids"])
  for k, v in g["coords"].items():
    coords[k] = ("model", np.asarray(v))
  data_vars = {name: (tuple(dims), arrays[name])
               for name, dims in schema["variables"].items() if name in arrays}
  ds = xr.Dataset(data_vars, coords=coords)
  ds.attrs.update(schema.get("attrs", {}))
  ds.attrs.update(group=group, **{f"static_{k}": v for k, v in g["static"].items()
                                  if not isinstance(v, (list, dict))})
  return ds


def load(workdir) -> dict:
  """{group name: xarray.Dataset} of a workdir."""
  grid = read_json(workdir_path.path(workdir) / "grid.json")
  return {g["name"]: load_group(workdir, g["name"]) for g in grid["groups"]}


def versions() -> dict:
  import importlib.metadata as md
  import jax
  out = {"python": platform.python_version(), "platform": platform.platform()}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "ml_collections"):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = None
  out["devices"] = [str(d) for d in jax.devices()]
  return out


# Config fields that say how a run keeps its work, not what it computes: a rerun
# may change them (a longer preemption budget for a relaunch, fewer checkpoints
# kept) and still resume the same study, whose records they never touch.
KEEPING_FIELDS = ("preemption_budget_seconds", "checkpoint_keep")


def study_identity(config_json: str) -> dict:
  """The config's fields that make a study what it is: all but KEEPING_FIELDS."""
  config = json.loads(config_json)
  return {k: v for k, v in config.items() if k not in KEEPING_FIELDS}


# What makes a resumed run's arithmetic differ from the run that wrote the
# workdir. Not the devices: a study resumes bitwise on another device or process
# count. Not the OS string, which changes with every kernel update.
VERSIONS_IGNORED = ("devices", "platform")


def changed_versions(workdir) -> str:
  """'jax 0.10.1 -> 0.10.2, ...' for each library (and Python) whose version in
  WORKDIR/versions.json differs from the running one; '' when none does, or
  when the workdir has no versions.json."""
  path = workdir_path.path(workdir) / "versions.json"
  if not path.exists():
    return ""
  then, now = read_json(path), versions()
  return ", ".join(f"{k} {then.get(k)} -> {now.get(k)}" for k in sorted(set(then) | set(now))
                   if k not in VERSIONS_IGNORED and then.get(k) != now.get(k))


def check_workdir(workdir, config_json: str) -> str:
  """"new" or "resume" (a workdir of this same study: the same config up to
  KEEPING_FIELDS); raises FileExistsError for one that holds a different study,
  or files that are no study's. Writes nothing."""
  workdir = workdir_path.path(workdir)
  cfg_path = workdir / "config.json"
  if cfg_path.exists():
    if study_identity(cfg_path.read_text()) != study_identity(config_json):
      raise FileExistsError(
          f"--workdir={workdir} holds a study with a different config; "
          f"choose another --workdir or delete that one")
    return "resume"
  # The lock file is the run's own, taken before this check (and the marker too).
  if workdir.exists() and any(p.name not in (LOCK_FILE, SHARED_MARKER)
                                                 for p in workdir.iterdir()):
    raise FileExistsError(f"--workdir={workdir} is not empty and holds no icsjax study; "
                          f"choose another --workdir")
  return "new"


def prepare_workdir(workdir, config_json: str, grid: dict) -> str:
  """Creates the workdir, or refuses one that holds a different study.

  Returns "new" or "resume" (the same config: the runner resumes it from its
  latest intact checkpoint, or from step 0).
  """
  status = check_workdir(workdir, config_json)
  workdir = workdir_path.path(workdir)
  with write_errors.writing(workdir):
    workdir.mkdir(parents=True, exist_ok=True)
  write_atomic(workdir / "config.json", lambda f: f.write(config_json.encode()))
  write_json(workdir / "grid.json", grid)
  write_json(workdir / "versions.json", versions())
  return status
