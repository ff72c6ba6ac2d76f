"""Gradient-ICS (docs/measurements.md, "Gradient-ICS"): the registry entry of
icsjax.probes.ics."""

from icsjax import fields as f
from icsjax.probes import ics
from icsjax.records.kind import PROBE_CONVENTION, Column, RecordKind

KIND = RecordKind(
    name="ics", title="gradient-ICS", cadence="ics_every", compute=ics.records,
    fields={"ics_every": f.Field("run", f.integer(0),
                                 "steps between gradient-ICS probes (0: off)")},
    dims={f"ics_grad_{m}": ("weight_layer",) for m in ("diff", "diff_relative", "cosine")},
    coords=lambda spec: {"weight_layer": (["weight_layer"], list(spec.weight_layers))},
    attrs=lambda spec: PROBE_CONVENTION,
    summary=(Column("ics_grad_diff_relative", "grad-ICS |G-G'|/|G|", "mean_after_first_layer"),),
)
