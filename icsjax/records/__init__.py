"""The registry of record kinds: what a run measures, each kind declared once.

Every kind (``RecordKind``, one module each here) names its cadence field and
its other config fields, a pure compute function of one model, the dims,
coordinates and attributes of its records, its summary columns, and what it
needs of placement, data and the host. Validation (icsjax.study), the loop
(icsjax.train), the workdir schema (icsjax.store), loading and the summary
derive from ``KINDS``; adding a measurement is a new module here, its compute
function, and a line in ``KINDS``.
"""

from __future__ import annotations

import numpy as np

from icsjax.records import at_test_time
from icsjax.records import batch_stats
from icsjax.records import curvature
from icsjax.records import evaluation
from icsjax.records import ics
from icsjax.records import landscape
from icsjax.records.kind import Column, RecordKind

# In the order the loop computes them, the summary shows them and records list them.
KINDS: tuple[RecordKind, ...] = (batch_stats.KIND, evaluation.KIND, ics.KIND, landscape.KIND,
                                 curvature.KIND, at_test_time.KIND)
BY_NAME = {k.name: k for k in KINDS}

# Every step's minibatch loss (and accuracy), before the update: an output of the
# training scan itself, stored like a kind's records along the axis "step".
PER_STEP = "per_step"
PER_STEP_AXIS = "step"
PER_STEP_COLUMNS = (Column("train_loss", "train loss", "last_eval_interval"),
                    Column("train_accuracy", "train acc", "last_eval_interval"))
# Per-model values that hold for the run (the latest segment's), dims (model,).
MODEL = "model"

STEP_CONVENTION = {"step_convention": "step t is the t-th update; per-step loss is before "
                                      "it, records and evaluations read the state after it"}


def fields() -> dict:
  """{name: Field} of every kind's config fields."""
  return {name: field for kind in KINDS for name, field in kind.fields.items()}


def active(run) -> tuple[RecordKind, ...]:
  """The kinds a run computes: those whose cadence is not 0."""
  return tuple(k for k in KINDS if k.every(run))


def variable_dims(kind: str, variable: str) -> tuple[str, ...]:
  """Named dims of a variable of a segment's records under key `kind`."""
  if kind == MODEL:
    return ("model",)
  if kind == PER_STEP:
    return ("model", PER_STEP_AXIS)
  return BY_NAME[kind].variable_dims(variable)


def time_coords(run, start: int) -> dict[str, np.ndarray]:
  """Each written time axis's steps within the segment starting after `start`;
  the first segment's start with step 0 where its kind records it."""
  seg = run.segment_steps
  out = {PER_STEP_AXIS: start + np.arange(1, seg + 1)}
  for kind in active(run):
    every = kind.every(run)
    first = 0 if start == 0 and kind.at_init else every
    out[kind.axis] = start + np.arange(first, seg + 1, every)
  return out


def has_step_0_slot(key: str) -> bool:
  """Whether a segment's records under `key` lead with a slot for step 0 (written
  in the first segment only: icsjax.train)."""
  return key in BY_NAME and BY_NAME[key].at_init


def without_step_0(records: dict) -> dict:
  """Host records of a segment after the first, without their step-0 slots."""
  return {kind: ({name: a[:, 1:] for name, a in tree.items()}
                 if has_step_0_slot(kind) else tree)
          for kind, tree in records.items()}


def fixed_coords(spec) -> dict:
  """{name: (dims, values)}: the coordinates a group's records keep for the run."""
  out = {}
  for kind in active(spec.run):
    if kind.coords is not None:
      out.update(kind.coords(spec))
  return out


def attrs(spec) -> dict:
  """How a group's records were measured, as dataset attributes."""
  out = dict(STEP_CONVENTION)
  for kind in active(spec.run):
    if kind.attrs is not None:
      out.update(kind.attrs(spec))
  return out


def model_records(spec, hparams) -> dict:
  """Per-model constants of the active kinds, {variable: (models,)}."""
  out = {}
  for kind in active(spec.run):
    if kind.model_records is not None:
      out.update(kind.model_records(spec, hparams))
  return out


def finish(records: dict) -> dict:
  """A segment's host records with every kind's derived records added."""
  for name, rec in records.items():
    kind = BY_NAME.get(name)
    if kind is not None and kind.finish is not None:
      rec.update(kind.finish(rec))
  return records


def summary_columns() -> tuple[Column, ...]:
  return PER_STEP_COLUMNS + tuple(c for k in KINDS for c in k.summary)


def prepare_data(data, run, static):
  """The group's dataset with what the active kinds read besides it."""
  for kind in active(run):
    if kind.prepare_data is not None:
      data = kind.prepare_data(data, run, static)
  return data


def memory_per_model(spec) -> int:
  """Bytes of per-model work arrays of the kinds that run their evaluations at once."""
  if spec.probes_in_sequence:  # a CPU probes one model per device at a time
    return 0
  return max([k.memory_per_model(spec) for k in active(spec.run) if k.memory_per_model] + [0])
