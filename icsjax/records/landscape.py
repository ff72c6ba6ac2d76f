"""The loss landscape along the update (docs/measurements.md, "Loss landscape
along the update"): the registry entry of icsjax.probes.landscape."""

from icsjax import fields as f
from icsjax.probes import landscape
from icsjax.records.kind import PROBE_CONVENTION, Column, RecordKind

KIND = RecordKind(
    name="landscape", title="landscape along the update", cadence="landscape_every",
    compute=landscape.records,
    fields={
        "landscape_every": f.Field("run", f.integer(0),
                                   "steps between loss-landscape probes (0: off)"),
        "landscape_lr_multiples": f.Field(
            "run", f.positive_float_tuple,
            "landscape step sizes eta as multiples of each model's lr"),
    },
    dims={name: ("lr_multiple",) for name in ("landscape_loss", "landscape_grad_diff",
                                               "landscape_grad_diff_relative")},
    coords=lambda spec: {"lr_multiple": (["lr_multiple"],
                                         list(spec.run.landscape_lr_multiples))},
    attrs=lambda spec: {**PROBE_CONVENTION,
                        "landscape_direction": "d = -update / lr; the point at lr_multiple c "
                                               "is theta - c * lr * d"},
    summary=(Column("landscape_beta_smoothness", "beta-smoothness", "mean"),),
)
