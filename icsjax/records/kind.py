"""The declaration of a record kind: everything the rest of icsjax needs to know
to validate, compute, place, store, load and summarise one measurement."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from icsjax.fields import Field


@dataclasses.dataclass(frozen=True)
class Column:
  """A column of the end-of-run summary table: one record, reduced per model."""
  variable: str
  header: str
  # "last": the last entry; "mean": over every entry; "mean_after_first_layer": over
  # entries of every weight layer but the first; "last_eval_interval": the mean
  # over the last eval_every steps.
  reduce: str


@dataclasses.dataclass(frozen=True)
class RecordKind:
  """One kind of record, computed for every model at its own cadence.

  ``compute(spec, fns, at)`` is a pure function of one model: ``spec`` the
  group (icsjax.spec.GroupSpec), ``fns`` closures of the model's forward pass
  and loss under its hyperparameters (icsjax.forward.ModelFns), ``at`` the
  model right after update ``at.step`` (icsjax.state.Moment). It returns
  {variable: array}; the loop stacks them along ``time_axis``, NaN once the
  model has diverged. A kind ``at_init`` is also computed at step 0: ``at``
  is then the initial state, and ``at.update`` update 1 (icsjax.train, segment_one).
  """
  name: str          # its key in a segment's records
  title: str         # in words, for messages and the report
  cadence: str       # the config field of its cadence, a multiple of scan_length
  compute: Callable[..., dict]
  fields: Mapping[str, Field]  # the config fields it adds, its cadence's included
  dims: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  default_dims: tuple[str, ...] = ()  # dims after (model, time) of variables not in dims
  time_axis: str = ""                 # "" : f"{name}_step"
  optional: bool = True               # a cadence of 0 switches it off
  # Whether it also records step 0, the state at initialisation (before any
  # update): for kinds that read the state, not those that probe an update.
  at_init: bool = False
  # (static, config, sizes, where) -> None; raises ConfigError. Checks that need
  # a group's static values and data sizes (sizes: {"train", "test"}).
  check: Callable | None = None
  coords: Callable[[Any], dict] | None = None   # spec -> {name: (dims, values)}
  attrs: Callable[[Any], dict] | None = None    # spec -> {name: text or number}
  summary: tuple[Column, ...] = ()
  # Host side, once per segment: this kind's records -> records derived from them.
  finish: Callable[[dict], dict] | None = None
  # Host side: (spec, hparams) -> {variable: (models,)}, per-model constants.
  model_records: Callable | None = None
  # Placement: inputs(spec, fns, at) selects the arrays compute reads, which then
  # runs one model per device at a time on a CPU (compute(spec, fns, inputs)).
  per_device_inputs: Callable | None = None
  # (spec) -> bytes of work arrays per model, when its evaluations run at once.
  memory_per_model: Callable | None = None
  # (data, run, static) -> data: extra arrays it reads, made once per dataset.
  prepare_data: Callable | None = None

  @property
  def axis(self) -> str:
    return self.time_axis or f"{self.name}_step"

  def every(self, run) -> int:
    """Its cadence in steps (0: off)."""
    return run[self.cadence]

  def variable_dims(self, variable: str) -> tuple[str, ...]:
    return ("model", self.axis) + tuple(self.dims.get(variable, self.default_dims))


# An attribute every probe's records carry (the same text, so it appears once).
PROBE_CONVENTION = {"probe_convention": "ics and landscape at step t probe update t itself "
                                        "(its batch, noise draw, parameters before it and real "
                                        "update); curvature reads the state after update t"}
