"""Loading a finished (or running) study for analysis in a notebook.

``load(workdir)`` gives every record of every group as one xarray.Dataset
whose model axis is indexed by the labels of the grid (variant, seed and each
swept field), so ``ds.sel(variant="batchnorm", lr=0.1)`` picks models by what
they are, never by position. ``load_model(workdir, step=..., variant=...,
seed=..., lr=...)`` gives one model back from a checkpoint, ready to apply.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from icsjax import records as records_lib
from icsjax import shards
from icsjax import steps_reached
from icsjax import store
from icsjax import workdir_path
from icsjax.store import NoRecords  # noqa: F401  (the API: a workdir with nothing to read)
from icsjax.analysis.saved_models import SavedModel, load_model  # noqa: F401  (the API)

# Per-group coordinates along `layer` or `weight_layer` that differ between
# groups (a swept width, depth or norm); they become per-model variables so
# groups can be joined.
PER_GROUP_LAYER_COORDS = ("layer_units", "scale_invariant")


def model_labels(ds: xr.Dataset) -> list[str]:
  """The per-model label coordinates of a group dataset: variant, seed, swept fields."""
  return [k for k, c in ds.coords.items() if c.dims == ("model",) and k != "model"]


def load(workdir) -> xr.Dataset:
  """Every group's records joined along the model axis.

  The model axis becomes a MultiIndex of the model labels; the global model id
  is kept as ``model_id`` and the group name as ``group``. Variables a group
  lacks (running statistics without batch norm, a layer a shallower group
  does not have) read NaN there.

  A study whose run stopped early (or is still running) is partial: the
  coordinate ``steps_done`` (model) says the last step each model's records
  reach, attributes ``steps_planned`` and ``partial`` compare them with the
  config, and a group with no finished segment yet is there with
  ``steps_done`` 0 and no records (icsjax.steps_reached). A workdir with no
  finished segment at all raises NoRecords.

  `workdir` may also be the parent folder of a study's shards (`shard-I-of-N`,
  icsjax.shards): their groups are joined in the study's order, exactly as if
  it had run whole; a partial one names its unfinished shards in the attribute
  ``unfinished_shards``. Shards that are not one study's split raise
  shards.ShardsDisagree.
  """
  workdir = workdir_path.path(workdir)
  groups, config = shards.members(workdir)
  planned = config["steps"]
  parts, done, unfinished = [], [], []
  for home, g in groups:
    name = g["name"]
    ds = store.load_group(home, name) if store.segment_paths(home, name) else _not_started(g)
    n = ds.sizes["model"]
    steps = ds[records_lib.PER_STEP_AXIS].values if records_lib.PER_STEP_AXIS in ds.coords \
        else []
    done += [int(np.max(steps)) if len(steps) else 0] * n
    if done[-1] < planned and home != workdir_path.path(workdir):  # a shard's group
      unfinished.append(home.name)
    ds = ds.assign_coords(model_id=("model", ds.model.values), group=("model", [name] * n))
    for coord in PER_GROUP_LAYER_COORDS:
      if coord in ds.coords:
        units = ds[coord].reset_coords(drop=True)
        ds = ds.drop_vars(coord).assign({coord: units.expand_dims(model=ds.model)})
    ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("static_") and k != "group"}
    parts.append(ds)
  labels = model_labels(parts[0])
  merged = xr.concat(parts, dim="model", join="outer", data_vars="all", coords="different",
                     compat="equals", combine_attrs="drop_conflicts")
  index_levels = [k for k in labels if k not in ("model_id", "group")]
  merged = steps_reached.annotate(merged, done, planned)
  if unfinished:
    merged.attrs[shards.UNFINISHED_SHARDS] = ", ".join(dict.fromkeys(unfinished))
  return merged.drop_vars("model").set_index(model=index_levels)


def _not_started(group: dict) -> xr.Dataset:
  """A group with no finished segment: its models and labels, no records."""
  coords = {"model": np.asarray(group["model_ids"])}
  coords.update({k: ("model", np.asarray(v)) for k, v in group["coords"].items()})
  return xr.Dataset(coords=coords)
