"""Live metrics: a running study as TensorBoard scalars, written segment by segment.

Once a group's segment is in its records, the scalars of that segment go to
event files under WORKDIR/tensorboard/GROUP/ (written with tensorboardX's
event writer, no TensorFlow needed) and are flushed at once, so
``tensorboard --logdir WORKDIR/tensorboard`` shows a study while it runs.
Each scalar is computed from the segment's records alone and stands at the
global step it was measured at. Tags read GROUP/CELL/NAME, CELL being the
swept dynamic values of the models averaged (``lr=0.1``; absent when none is
swept); the value is the mean over that cell's seeds whose value is finite,
and a step where none is finite is left out (docs/measurements.md, "Live
metrics").

A resumed run deletes the records after its checkpoint's step S and writes them
again; here it opens a new event file per group that starts with TensorBoard's
restart marker (SessionLog START) at step S + 1 (step 0 when it starts over,
since the first segment writes step 0 too). TensorBoard then drops what
earlier files hold from that step on, and the new file writes those steps
again, with the same values, runs being deterministic (only the wall-clock
throughput differs). Event files sort by their names, which begin with the
time they were opened, so a later run's file is read after an earlier one's.
"""

from __future__ import annotations

import os
import time

import numpy as np

from icsjax import records as records_lib
from icsjax import study as study_lib
from icsjax import write_errors

DIRECTORY = "tensorboard"

# (name, record variable, per-model reduction of its extra dims): the probes'
# scalars. grad-ICS leaves out the first weight layer (G' = G there by
# definition); the scale-aware sharpness the output layer, which no norm follows.
PROBES = (
    ("grad_ics", "ics_grad_diff_relative", lambda a: np.mean(a[..., 1:], axis=-1)),
    ("beta_smoothness", "landscape_beta_smoothness", lambda a: a),
    ("lambda_max", "hessian_lambda_max", lambda a: a),
    ("sharpness_scaled", "layer_sharpness_scaled", lambda a: np.mean(a[..., :-1], axis=-1)),
)
# (name, eval record): the test evaluation with running statistics (eval mode).
TEST = (("test_loss", "test_loss_eval_mode"), ("test_accuracy", "test_accuracy_eval_mode"))
TRAIN = ("train_loss", "train_accuracy")
THROUGHPUT = "model_steps_per_s"
# A process's first segment of a group also compiles its loop: its rate says so.
THROUGHPUT_COMPILING = "model_steps_per_s_with_compilation"


def group_directory(workdir, group: str) -> str:
  """WORKDIR/tensorboard/GROUP, a string so that a bucket's gs:// path stays whole."""
  return os.path.join(str(workdir), DIRECTORY, group)


def open_writer(directory: str, purge_step: int):
  """A new event file in `directory` (local or gs://, tensorboardX's own file
  support) whose first event is TensorBoard's restart marker at `purge_step`:
  events of earlier files at that step and after are dropped."""
  from tensorboardX.event_file_writer import EventsWriter
  from tensorboardX.proto.event_pb2 import Event, SessionLog
  from tensorboardX.record_writer import directory_check
  with write_errors.writing(directory):
    directory_check(directory)
    # Nanoseconds after the name's whole seconds: two runs within a second still sort.
    writer = EventsWriter(os.path.join(directory, "events"), f".{time.time_ns()}")
    writer.write_event(Event(step=purge_step, wall_time=time.time(),
                             session_log=SessionLog(status=SessionLog.START)))
  return writer


def cells(coords: dict) -> list[tuple[str, np.ndarray]]:
  """[(CELL, model indices)]: a group's models by their swept dynamic values, in grid
  order; CELL is "" when no dynamic field is swept."""
  names = [k for k in coords if k in study_lib.DYNAMIC_FIELDS]
  labels = [",".join(f"{k}={coords[k][m]}" for k in names) for m in range(len(coords["seed"]))]
  return [(c, np.flatnonzero(np.asarray(labels) == c)) for c in dict.fromkeys(labels)]


def seed_mean(values: np.ndarray) -> np.ndarray:
  """(seeds, T) -> (T,): the mean over the finite values (float64); NaN where none is."""
  values = np.asarray(values, np.float64)
  finite = np.isfinite(values)
  count = finite.sum(axis=0)
  total = np.where(finite, values, 0.0).sum(axis=0)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def series(records: dict, time_coords: dict, eval_every: int) -> dict:
  """{name: ((models, T) per-model values, (T,) steps)} of one segment's records."""
  out = {}
  per_step = records.get(records_lib.PER_STEP, {})
  evals = records[records_lib.BY_NAME["eval"].name]
  eval_steps = time_coords[records_lib.BY_NAME["eval"].axis]
  for name in TRAIN:
    if name in per_step:
      # segment_steps is a multiple of eval_every: the segment's steps fall into whole
      # intervals, each ending at one of its evaluations (step 0 has none before it).
      v = np.asarray(per_step[name], np.float64)
      out[name] = (v.reshape(len(v), -1, eval_every).mean(axis=-1), eval_steps[eval_steps > 0])
  for name, variable in TEST:
    if variable in evals:
      out[name] = (evals[variable], eval_steps)
  for kind, tree in records.items():
    for name, variable, reduce in PROBES:
      if variable in tree:
        axis = records_lib.variable_dims(kind, variable)[1]
        out[name] = (reduce(np.asarray(tree[variable], np.float64)), time_coords[axis])
  return out


def scalars(group: str, coords: dict, records: dict, time_coords: dict, eval_every: int,
            end_step: int) -> list[tuple[str, int, float]]:
  """[(tag, step, value)] of one group's segment, its throughput aside: each series
  averaged over each cell's seeds, and each cell's failed models at the segment's end."""
  out = []
  per_model = series(records, time_coords, eval_every)
  failed = np.asarray(records[records_lib.MODEL]["failed"], bool)
  for cell, models in cells(coords):
    prefix = f"{group}/{cell}/" if cell else f"{group}/"
    for name, (values, steps) in per_model.items():
      for step, value in zip(steps, seed_mean(np.asarray(values)[models])):
        if np.isfinite(value):
          out.append((prefix + name, int(step), float(value)))
    out.append((prefix + "failed", end_step, float(failed[models].sum())))
  return out


def throughput(group: str, models: int, steps: int, seconds: float, compiled: bool,
               end_step: int) -> tuple[str, int, float]:
  name = THROUGHPUT_COMPILING if compiled else THROUGHPUT
  return (f"{group}/{name}", end_step, models * steps / max(seconds, 1e-9))


class LiveMetrics:
  """The event files of a run: one per group, opened at the group's first segment in
  this process, with the restart marker of the step it resumes from."""

  def __init__(self, workdir, first_step: int):
    self.workdir = workdir
    self.purge_step = first_step + 1 if first_step else 0
    self.writers: dict = {}

  def write(self, group, spec, records: dict, start: int, seconds: float,
            compiled: bool) -> None:
    """Writes and flushes the scalars of `group`'s segment starting after step
    `start`, which took `seconds` of wall time (`compiled`: compiling included)."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary
    run = spec.run
    end = start + run.segment_steps
    values = scalars(group.name, group.coords, records,
                     records_lib.time_coords(run, start), run.eval_every, end)
    values.append(throughput(group.name, group.size, run.segment_steps, seconds, compiled, end))
    if group.name not in self.writers:
      self.writers[group.name] = open_writer(group_directory(self.workdir, group.name),
                                             self.purge_step)
    writer = self.writers[group.name]
    now = time.time()
    with write_errors.writing(group_directory(self.workdir, group.name)):
      for tag, step, value in values:
        writer.write_event(Event(step=step, wall_time=now, summary=Summary(
            value=[Summary.Value(tag=tag, simple_value=value)])))
      writer.flush()

  def close(self) -> None:
    for writer in self.writers.values():
      writer.close()
    self.writers = {}
