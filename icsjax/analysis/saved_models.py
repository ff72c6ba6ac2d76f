"""One model of a study, back from any of its checkpoints, ready to apply to data.

    m = load_model("runs/default", step=1500, variant="batchnorm", seed=0, lr=0.1)
    logits = m.apply(m.dataset().test_x[:100])          # eval mode: running statistics
    logits = m.apply(x, train=True)                     # batch statistics of x
    loss = m.eval_loss(x, y)                            # params -> loss, for analysis.surfaces

Checkpoints hold host arrays, so this runs on a CPU whatever trained the study.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from icsjax import checkpoint as checkpoint_lib
from icsjax import data as data_lib
from icsjax import models
from icsjax import shards
from icsjax import store
from icsjax import workdir_path
from icsjax.analysis import surfaces


@dataclasses.dataclass(frozen=True)
class SavedModel:
  """A model of the grid at one checkpoint step."""
  module: nn.Module
  variables: dict       # {"params": ..., "batch_stats": ...}, this model's own (no model axis)
  hparams: dict         # its per-model hyperparameters (lr, bn_momentum, noise, ...)
  labels: dict          # what it is in the grid: variant, seed, swept values
  step: int             # updates applied
  group: str
  static: dict          # the group's static config (dataset, arch, norm, ...)

  def apply(self, x, train: bool = False, noise_key=None):
    """Outputs on x: eval mode (running statistics) or train mode (statistics of
    the batch x; noisy BN draws its noise from noise_key, none without one)."""
    hp = {k: jnp.float32(v) for k, v in self.hparams.items()}
    rngs = {"noise": noise_key} if noise_key is not None else {}
    if train:
      (out, _), _ = self.module.apply(self.variables, x, train=True, hp=hp, rngs=rngs,
                                      mutable=["batch_stats"])
      return out
    out, _ = self.module.apply(self.variables, x, train=False, hp=hp)
    return out

  def eval_loss(self, x, y):
    """Its eval-mode loss on (x, y) as a function of parameters (running
    statistics fixed at this checkpoint's): what icsjax.analysis.surfaces scans."""
    return surfaces.eval_mode_loss(self.module, self.variables["batch_stats"], x, y,
                                   data_lib.task_of(self.static))

  def dataset(self) -> data_lib.Dataset:
    """The data it was trained on, standardised as in training."""
    return data_lib.load(self.static)


def _matches(value, wanted) -> bool:
  if isinstance(value, float) or isinstance(wanted, float):
    return math.isclose(float(value), float(wanted), rel_tol=1e-9)
  return value == wanted


def find_model(grid: dict, labels: dict) -> tuple[dict, int]:
  """(group, index within it) of the one model whose labels match `labels`."""
  known = {k for g in grid["groups"] for k in g["coords"]}
  unknown = sorted(set(labels) - known)
  if unknown:
    raise ValueError(f"{unknown[0]!r} is not a label of this study's models; "
                     f"labels: {', '.join(sorted(known))}")
  hits = [(g, i) for g in grid["groups"] for i in range(len(g["model_ids"]))
          if all(_matches(g["coords"][k][i], v) for k, v in labels.items())]
  if len(hits) != 1:
    values = {k: sorted({v for g in grid["groups"] for v in g["coords"][k]}, key=str)
              for k in sorted(known)}
    raise ValueError(f"{len(hits)} models match {labels}; name one model by these labels "
                     f"and values: {values}")
  return hits[0]


def load_model(workdir, step: int | None = None, **labels: Any) -> SavedModel:
  """The model with these labels (variant=, seed=, lr=, any swept field) at the
  checkpoint of `step` (None: the latest intact one). `workdir` may be the parent
  folder of a study's shards (icsjax.shards): the model is read from its group's."""
  workdir = workdir_path.path(workdir)
  if shards.is_parent(workdir):
    joined = shards.join(workdir)
    workdir = joined.home[find_model(joined.grid, labels)[0]["name"]]
  grid = store.read_json(workdir / "grid.json")
  group, index = find_model(grid, labels)
  with checkpoint_lib.Checkpoints(workdir, async_save=False) as checkpoints:
    steps = checkpoints.steps()
    if not steps:
      raise FileNotFoundError(f"{workdir} holds no checkpoint (was checkpoint_segments 0?)")
    if step is None:
      step, trees = checkpoints.read_latest([group["name"]])
      if trees is None:
        raise checkpoint_lib.CorruptCheckpoint(f"every checkpoint of {workdir} is damaged")
    elif step not in steps:
      raise ValueError(f"step={step} has no checkpoint in {workdir}; steps with one: {steps}")
    else:
      trees = checkpoints.read(step, [group["name"]])
  tree = trees[group["name"]]
  one = jax.tree_util.tree_map(lambda a: a[index], tree)
  static = group["static"]
  _, num_outputs = data_lib.input_shape_and_outputs(static)
  return SavedModel(
      module=models.build(static, num_outputs),
      variables={"params": one["params"], "batch_stats": one.get("batch_stats", {})},
      hparams={k: v[index] for k, v in group["hparams"].items()},
      labels={k: v[index] for k, v in group["coords"].items()},
      step=step, group=group["name"], static=static)
