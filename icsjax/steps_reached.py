"""How far each model of a study got, and reading records over common steps.

A run trains every group one segment at a time, so a run that stopped early
(killed, interrupted, or still running) leaves groups that reached different
steps: joined along the model axis, the shorter ones read NaN after their
last step. ``analysis.load`` says how far each model got (the coordinate
STEPS_DONE, and the attributes STEPS_PLANNED and PARTIAL); `upto` cuts a
dataset back to the steps some models all reached, so that a comparison of
them never sets one model's later training against another's absence.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from icsjax import records as records_lib

STEPS_DONE = "steps_done"  # (model,): the last training step whose records are on disk
STEPS_PLANNED = "steps_planned"  # attribute: the config's `steps`
PARTIAL = "partial"  # attribute: True when some model has not reached steps_planned


def time_axes(ds: xr.Dataset) -> list[str]:
  """The dims of `ds` that are time axes (the per-step one and each kind's)."""
  axes = (records_lib.PER_STEP_AXIS,) + tuple(k.axis for k in records_lib.KINDS)
  return [a for a in dict.fromkeys(axes) if a in ds.dims]


def annotate(ds: xr.Dataset, steps_done, steps_planned: int) -> xr.Dataset:
  """`ds` with its models' steps done (per model) and the study's plan attached."""
  done = np.asarray(steps_done, dtype=np.int64)
  ds = ds.assign_coords({STEPS_DONE: ("model", done)})
  ds.attrs.update({STEPS_PLANNED: int(steps_planned),
                   PARTIAL: bool((done < steps_planned).any())})
  return ds


def common_step(ds: xr.Dataset, models=None) -> int | None:
  """The last step every model of `models` (a boolean mask over the model axis; None:
  all) reached; None when `ds` does not say (no STEPS_DONE) or no model is selected."""
  if STEPS_DONE not in ds.coords:
    return None
  done = ds[STEPS_DONE].values
  done = done if models is None else done[np.asarray(models, bool)]
  return int(done.min()) if done.size else None


def upto(ds: xr.Dataset, step: int) -> xr.Dataset:
  """`ds` with every time axis cut to the steps ≤ `step`, and each model's steps done
  capped there; `ds` itself when no model is past `step` (nothing to cut)."""
  if STEPS_DONE in ds.coords and (ds[STEPS_DONE].values <= step).all():
    return ds
  ds = ds.sel({axis: ds[axis] <= step for axis in time_axes(ds)})
  if STEPS_DONE in ds.coords:
    ds = ds.assign_coords({STEPS_DONE: np.minimum(ds[STEPS_DONE], step)})
  return ds


def on_common_steps(ds: xr.Dataset, models=None) -> xr.Dataset:
  """`ds` read over the steps every model of `models` (mask; None: all) reached."""
  step = common_step(ds, models)
  return ds if step is None else upto(ds, step)


def reached_text(ds: xr.Dataset) -> str:
  """'norm-none step 40, norm-batchnorm step 20' (per group, in model order; a group
  with no finished segment: 'norm-x no step')."""
  groups = ds["group"].values.tolist() if "group" in ds.coords else ["all models"] * ds.sizes[
      "model"]
  done = dict(zip(groups, ds[STEPS_DONE].values.tolist()))
  return ", ".join(f"{g} step {s}" if s else f"{g} no step" for g, s in done.items())
