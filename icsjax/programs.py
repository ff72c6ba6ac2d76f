"""Logical groups and compiled programs.

A *logical group* (icsjax.study.Group) is one combination of static labels:
the unit of `records/GROUP`, of resuming, of shards and of everything analysis
reads. A *compiled program* is what XLA runs: one logical group, or several
groups of one family (equal in every static field but the network's width,
depth and a VGG's channels per stage) padded into one network, the widest and
deepest of them. Each model of a padded program keeps its own network exactly:

- its narrower layers' extra units (padding units) start at 0 weight, output
  0 after their activation, take no part in any norm's statistics (icsjax.norms:
  stand-ins) and so get exactly zero gradient; its missing layers are the
  identity (icsjax.models: `variant_units`);
- its initial state is its own network's, padded (`padding.pad_tree`), and every random
  draw a record kind or a noisy norm makes is drawn at its own network's shapes
  and padded with zeros (`icsjax.forward.ModelFns.random_like`, norms'
  `variant_noise`), so that it draws the same numbers as alone;
- its records are cut back to its own layers and units (`split_records`), and its
  checkpointed state to its own shapes (`padding.unpad_tree`), so that nothing written
  tells how it was run.

Its values then differ from the network's alone only by the order in which a
wider matrix product adds its (exactly zero) extra terms: rounding, within
1e-5 relative for a step and a probe (tests/test_programs.py).

``config.programs`` chooses: "separate" (a program per group), "padded" (a
program per family) or "auto": per family, the cheaper by `estimate_seconds`,
a cost model of padding waste against each program's fixed costs, with
constants per backend in COSTS.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from icsjax import data as data_lib
from icsjax import models
from icsjax import records as records_lib
from icsjax.norms import PROGRAM_VARIANT

MODES = ("auto", "separate", "padded")
PADDED_FIELDS = ("width", "depth", "channels")  # what a program pads

# Per backend, what a program costs beyond its arithmetic: launching a step,
# per weight layer of its network (small programs on accelerators are bound by
# kernel launches); compiling, a base and a part per weight layer, for each of
# the networks it trains (a padded program compiled as long as its groups
# alone did: 65.8 s for a depth-3 and a depth-8 group against 69.7 s
# separately, benchmarks/programs.py); and the FLOP/s one device sustains on
# these small networks, record kinds included. Measured with
# `benchmarks/study_rate.py --fit_costs` (its docstring says how; rerun it on
# new hardware and put its figures here). cpu: 2 cores, jax 0.10.2, the
# default study's batchnorm groups with every probe: 24.7 (depth 3) and 24.2
# GFLOP/s (depth 8), no measurable cost per step, compiles of 22 and 37 s.
# gpu: 75 us a step for the default MLP's 4 weight layers, whatever the
# models (H100 runs of the default study's groups); its compile times and
# rate are estimates awaiting a device run. tpu: the gpu figures.
COSTS = {
    "cpu": {"step_seconds_per_layer": 0.0, "compile_seconds": 10.2,
            "compile_seconds_per_layer": 2.94, "flops_per_second": 2.4e10},
    "gpu": {"step_seconds_per_layer": 19e-6, "compile_seconds": 10.0,
            "compile_seconds_per_layer": 2.0, "flops_per_second": 2e13},
}
COSTS["tpu"] = COSTS["gpu"]


@dataclasses.dataclass(frozen=True)
class Program:
  """Logical groups compiled and run as one program (one group: no padding)."""
  groups: tuple  # of icsjax.study.Group
  static: dict   # the program's network: the widest and deepest of its groups'

  @property
  def padded(self) -> bool:
    return len(self.groups) > 1

  @property
  def name(self) -> str:
    names = [g.name for g in self.groups]
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} padded)"

  @property
  def variants(self) -> tuple:
    """Each group's static config, in variant order (() when not padded)."""
    return tuple(g.static for g in self.groups) if self.padded else ()

  @property
  def size(self) -> int:
    return sum(g.size for g in self.groups)

  def offsets(self) -> list[int]:
    """Each group's first model within the program's model axis."""
    return list(np.cumsum([0] + [g.size for g in self.groups])[:-1])

  def hparams(self) -> dict:
    """Per-model hyperparameters of every group in order, with each model's variant."""
    out = {k: sum((tuple(g.hparams[k]) for g in self.groups), ()) for k in self.groups[0].hparams}
    if self.padded:
      out[PROGRAM_VARIANT] = sum(((float(v),) * g.size for v, g in enumerate(self.groups)), ())
    return out

  def seeds(self) -> tuple:
    return sum((tuple(g.coords["seed"]) for g in self.groups), ())


def family(static: dict) -> tuple:
  """Groups of one family may share a padded program: every static field equal
  but the padded ones, and as many convolution stages (a VGG's channels may
  differ stage by stage, not its number of stages, which sets the feature
  map's size)."""
  return (tuple(sorted((k, str(v)) for k, v in static.items() if k not in PADDED_FIELDS))
          + (("stages", len(static["channels"])),))


def padded_static(statics) -> dict:
  """The program network of a family: the widest and deepest of its members,
  each stage with the most channels any member has there."""
  out = dict(statics[0])
  for k in ("width", "depth"):
    out[k] = max(s[k] for s in statics)
  out["channels"] = tuple(max(c) for c in zip(*(s["channels"] for s in statics)))
  return out


def _param_shapes(static: dict):
  """One network's parameter tree, as shapes."""
  return models.param_shapes(static, *data_lib.input_shape_and_outputs(static))


def model_macs(static: dict) -> int:
  """Multiply-adds of one example's forward pass (dense and conv layers)."""
  shape, _ = data_lib.input_shape_and_outputs(static)
  params = _param_shapes(static)
  total, side = 0, shape[0] if len(shape) == 3 else 1
  for name in sorted(params, key=lambda n: (not n.startswith("conv"), n)):
    if "kernel" not in params[name]:
      continue
    kernel = params[name]["kernel"].shape
    if name.startswith("conv"):
      stage = int(name.split("_")[1]) // static["convs_per_stage"]
      positions = math.ceil(side / 2 ** stage) ** 2
      total += positions * math.prod(kernel)
    else:
      total += math.prod(kernel)
  return total


def step_flops(static: dict, models: int) -> int:
  """FLOPs of one training step of `models` networks of `static`: 6 x MACs x
  batch each (2 FLOPs per multiply-add; forward, and backward to the inputs
  and to the weights)."""
  return 6 * model_macs(static) * static["batch_size"] * models


def padding_waste(groups, static: dict) -> float:
  """The share of a padded program's work (network `static`) spent on padding."""
  real = sum(step_flops(g.static, g.size) for g in groups)
  return 1 - real / step_flops(static, sum(g.size for g in groups))


def weight_layers(static: dict) -> int:
  """Layers with a kernel: the normalised ones and the output layer."""
  shape, outputs = data_lib.input_shape_and_outputs(static)
  return len(models.build(static, outputs).layer_units) + 1


def estimate_seconds(static: dict, models: int, variants, steps: int, costs: dict) -> float:
  """One program's time for `steps` steps of `models` networks of `static` (a
  padded program: its padded network), compiled for `variants` (its groups'
  own networks; one program of one group: [static]): see COSTS. The probes'
  work scales with the training step's, so `step_flops` stands for both."""
  compile_seconds = sum(costs["compile_seconds"]
                        + costs["compile_seconds_per_layer"] * weight_layers(v)
                        for v in variants)
  per_step = (costs["step_seconds_per_layer"] * weight_layers(static)
              + step_flops(static, models) / costs["flops_per_second"])
  return compile_seconds + steps * per_step


@dataclasses.dataclass(frozen=True)
class Choice:
  """What the plan decided for a family of two or more groups, and why."""
  groups: tuple[str, ...]
  padded: bool
  waste: float            # share of the padded program's work spent on padding
  padded_seconds: float   # the cost model's estimates
  separate_seconds: float
  reason: str = ""        # why it could not be padded, if so

  def describe(self) -> str:
    head = f"{len(self.groups)} groups ({', '.join(self.groups)})"
    if self.reason:
      return f"{head}: separate programs ({self.reason})"
    verdict = "one padded program" if self.padded else "separate programs"
    return (f"{head}: {verdict}; padding would waste {self.waste:.0%} of the padded "
            f"program's work; estimated {self.padded_seconds:.0f} s padded vs "
            f"{self.separate_seconds:.0f} s separate")


def why_not_padded(groups, run) -> str:
  """Why these groups cannot share a padded program exactly ('' if they can)."""
  if run.curvature_every:
    sizes = [math.prod(leaf.shape) for g in groups
             for name, layer in _param_shapes(g.static).items() if "kernel" in layer
             for leaf in [layer["kernel"]]]
    if run.layer_lanczos_steps > min(sizes):
      return (f"layer_lanczos_steps={run.layer_lanczos_steps} exceeds a kernel's size "
              f"({min(sizes)}), where the per-layer probe runs as many steps as the "
              f"kernel has entries")
  return ""


def plan(study, backend: str) -> tuple[tuple[Program, ...], tuple[Choice, ...]]:
  """The study's programs, in the order of their first groups, and the choice
  made for each family of two or more groups."""
  mode, run = study.config.programs, study.config
  families: dict[tuple, list] = {}
  for g in study.groups:
    families.setdefault(family(g.static), []).append(g)
  costs = COSTS.get(backend, COSTS["gpu"])
  steps = study.config.steps
  programs, choices = [], []
  for members in families.values():
    if len(members) == 1:
      programs.append(Program(tuple(members), members[0].static))
      continue
    static = padded_static([g.static for g in members])
    names = tuple(g.name for g in members)
    reason = why_not_padded(members, run) if mode != "separate" else ""
    models = sum(g.size for g in members)
    own = sum(estimate_seconds(g.static, g.size, [g.static], steps, costs) for g in members)
    together = estimate_seconds(static, models, [g.static for g in members], steps, costs)
    padded = not reason and (mode == "padded" or (mode == "auto" and together < own))
    choices.append(Choice(names, padded, padding_waste(members, static), together, own, reason))
    if padded:
      programs.append(Program(tuple(members), static))
    else:
      programs.extend(Program((g,), g.static) for g in members)
  order = {g.name: i for i, g in enumerate(study.groups)}
  programs.sort(key=lambda p: order[p.groups[0].name])
  return tuple(programs), tuple(choices)


# --- records ------------------------------------------------------------------------

def split_records(records: dict, program: Program, program_spec, group_specs) -> dict:
  """{group name: records}: a program's host records cut into its groups' own:
  their models, and (padded) their own layers and units, with NaN where a layer
  has fewer units than the group's widest, as the group alone writes them."""
  out = {}
  for g, spec, start in zip(program.groups, group_specs, program.offsets()):
    models_of = slice(start, start + g.size)
    if not program.padded:
      out[g.name] = jax.tree_util.tree_map(lambda a: a[models_of], records)
      continue
    layers = [program_spec.layer_names.index(n) for n in spec.layer_names]
    weights = [program_spec.weight_layers.index(n) for n in spec.weight_layers]
    units = np.asarray(spec.layer_units)
    out[g.name] = {kind: {name: _cut(a[models_of], records_lib.variable_dims(kind, name),
                                     layers, weights, units, spec.max_units)
                          for name, a in tree.items()}
                   for kind, tree in records.items()}
  return out


def _cut(a, dims, layers, weights, units, max_units):
  index = tuple({"layer": layers, "weight_layer": weights,
                 "unit": slice(0, max_units)}.get(d, slice(None)) for d in dims)
  # One list index at a time: NumPy would pair several lists up.
  for axis, i in enumerate(index):
    a = a[(slice(None),) * axis + (i,)]
  if "layer" in dims and "unit" in dims:
    layer, unit = dims.index("layer"), dims.index("unit")
    shape = [1] * a.ndim
    shape[layer], shape[unit] = len(units), max_units
    missing = (np.arange(max_units)[None, :] >= units[:, None])
    if layer > unit:
      missing = missing.T
    a = np.where(missing.reshape(shape), np.nan, a)
  return a
