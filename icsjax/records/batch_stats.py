"""Batch-statistic trajectories (docs/measurements.md, "Batch-statistic
trajectories"): per layer and unit, the minibatch moments of the pre-norm
activation and of the nonlinearity input, the running statistics, and
percentiles of the nonlinearity input over a fixed monitor set; per layer,
over the monitor set, the saturated fraction and the variances of both
("Signal propagation and saturation"). Recorded at step 0 too."""

from __future__ import annotations

import jax.numpy as jnp

from icsjax import fields as f
from icsjax import keys
from icsjax import models
from icsjax.forward import stack_layers
from icsjax.records.kind import RecordKind

QUANTILES = (0.15, 0.50, 0.85)
MONITOR_MODES = ("train", "eval")


def compute(spec, fns, at):
  """The update's batch moments (the step computes them), the running statistics
  after it, and of the monitor set (train mode with this step's monitor noise,
  or eval mode): percentiles, saturated fractions and variances."""
  state = at.state
  rec = dict(at.update.moments)
  for name in spec.running_stat_names:
    rec[f"running_{name}"] = stack_layers(
        [state.batch_stats[f"norm_{i}"][name] for i in range(spec.num_layers)], spec.max_units)
  train = spec.run.monitor_mode == "train"
  noise = fns.noise_key(state, at.step, keys.MONITOR) if train else None
  _, taps, _ = fns.apply(state.params, state.batch_stats, at.data.monitor_x, train=train,
                         noise=noise)
  units = jnp.asarray(spec.run.tracked_units)
  q = jnp.asarray(QUANTILES)
  # Over monitor examples (and, in a conv layer, every position): (layer, unit, quantile)
  rec["monitor_percentiles"] = jnp.stack(
      [jnp.quantile(z.reshape(-1, z.shape[-1])[:, units], q, axis=0).T for _, z in taps])
  rec.update(monitor_signal(taps, spec.activation, fns.unit_masks))
  return rec


def monitor_signal(taps, activation: str, unit_masks=None) -> dict:
  """Per layer (layer,): the fraction of saturated (example, position, unit)
  entries of the nonlinearity input z, and the variances of the pre-norm
  activation and of z over examples (and positions), averaged over units (a
  padded program's: over the real units of `unit_masks`)."""
  saturated = models.SATURATION[activation][1]
  if unit_masks is None:
    unit_var = lambda a: jnp.mean(jnp.var(a.reshape(-1, a.shape[-1]), axis=0))
    return {"saturated_fraction": jnp.stack([jnp.mean(saturated(z)) for _, z in taps]),
            "monitor_preact_var": jnp.stack([unit_var(a) for a, _ in taps]),
            "monitor_nonlin_input_var": jnp.stack([unit_var(z) for _, z in taps])}
  # Every real unit has as many entries, so the mean over units of per-unit means
  # is the mean over every real entry.
  def real_mean(per_unit, mask):
    return jnp.sum(jnp.where(mask, per_unit, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
  rows = lambda a: a.reshape(-1, a.shape[-1])
  over = lambda f, which: jnp.stack([real_mean(f(rows(tap[which])), m)
                                     for tap, m in zip(taps, unit_masks)])
  return {"saturated_fraction": over(lambda z: jnp.mean(saturated(z), axis=0), 1),
          "monitor_preact_var": over(lambda a: jnp.var(a, axis=0), 0),
          "monitor_nonlin_input_var": over(lambda z: jnp.var(z, axis=0), 1)}


def check(static, config, sizes, where):
  units = min(models.build(static, 1).layer_units)
  bad = [u for u in config.tracked_units if u >= units]
  if bad:
    raise f.fail("tracked_units", tuple(config.tracked_units),
                 f"must name units below {units}, the narrowest normalised layer "
                 f"(width, channels){where}")


KIND = RecordKind(
    name="record", title="batch statistics", cadence="record_every", compute=compute,
    time_axis="record_step", optional=False, at_init=True,
    fields={
        "record_every": f.Field("run", f.integer(1), "cadence of batch-statistic records"),
        "tracked_units": f.Field("run", f.unit_tuple,
                                 "units whose monitor-set percentiles are recorded"),
        "monitor_mode": f.Field("run", f.choice(MONITOR_MODES),
                                "norm mode of the percentile pass"),
    },
    dims={"monitor_percentiles": ("layer", "tracked_unit", "quantile"),
          **{name: ("layer",) for name in ("saturated_fraction", "monitor_preact_var",
                                           "monitor_nonlin_input_var")}},
    default_dims=("layer", "unit"),
    check=check,
    coords=lambda spec: {"layer": (["layer"], list(spec.layer_names)),
                         "layer_units": (["layer"], list(spec.layer_units)),
                         "unit": (["unit"], list(range(spec.max_units))),
                         "tracked_unit": (["tracked_unit"], list(spec.run.tracked_units)),
                         "quantile": (["quantile"], list(QUANTILES))},
    attrs=lambda spec: {"monitor_mode": spec.run.monitor_mode,
                        "monitor_examples": spec.static["monitor_size"],
                        "saturation_threshold": models.SATURATION[spec.activation][0]},
)
