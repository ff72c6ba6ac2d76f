"""Curvature from Hessian-vector products (docs/measurements.md, "Curvature"):
the registry entry of icsjax.probes.curvature."""

from icsjax import fields as f
from icsjax.norms import BATCH_NORM_KINDS
from icsjax.probes import curvature
from icsjax.records.kind import PROBE_CONVENTION, Column, RecordKind


def check(static, config, sizes, where):
  b = config.curvature_batch_size
  if b > sizes["train"]:
    raise f.fail("curvature_batch_size", b,
                 f"must be <= {sizes['train']}, the training set size{where}")
  if static["norm"] in BATCH_NORM_KINDS and b < 2:
    raise f.fail("curvature_batch_size", b, f"must be >= 2 for norm={static['norm']!r}: the "
                 f"probe runs in train mode, on batch statistics{where}")
  from icsjax import data as data_lib, models  # shapes only
  num_params = models.num_params(static, *data_lib.input_shape_and_outputs(static))
  if config.lanczos_steps > num_params:
    raise f.fail("lanczos_steps", config.lanczos_steps,
                 f"must be <= {num_params}, the model's parameter count (a Krylov basis "
                 f"has at most that many vectors){where}")


KIND = RecordKind(
    name="curvature", title="curvature (Lanczos, Hutchinson)", cadence="curvature_every",
    compute=curvature.records,
    fields={
        "curvature_every": f.Field("run", f.integer(0),
                                   "steps between Hessian probes (0: off)"),
        "curvature_batch_size": f.Field("run", f.integer(1), "the fixed probe batch: the "
                                        "first training examples"),
        "lanczos_steps": f.Field("run", f.integer(1), "Lanczos steps per SLQ vector "
                                 "(Hessian-vector products)"),
        "layer_lanczos_steps": f.Field("run", f.integer(1), "Lanczos steps per weight layer "
                                       "for its kernel's λ_max (at most the kernel's size is "
                                       "used)"),
        "slq_vectors": f.Field("run", f.integer(1),
                               "random start vectors of the spectral density"),
        "hutchinson_samples": f.Field("run", f.integer(1),
                                      "Rademacher vectors of the trace estimate"),
        "probe_memory_mb": f.Field(
            "run", f.integer(0), "accelerator memory per device for the curvature probe's "
            "Lanczos bases and Hutchinson vectors; models are probed in chunks that fit (0: a "
            "quarter of the device's, else 2 GiB; a CPU probes one model per device at a "
            "time)"),
    },
    dims={**{name: ("slq_vector", "lanczos_step")
             for name in ("slq_nodes", "slq_weights", "lanczos_alpha", "lanczos_beta")},
          **{name: ("weight_layer",) for name in ("probe_grad_norm", "weight_norm",
                                                   "layer_lambda_max", "layer_sharpness_scaled")}},
    check=check,
    coords=lambda spec: {
        "weight_layer": (["weight_layer"], list(spec.weight_layers)),
        "scale_invariant": (["weight_layer"], list(spec.scale_invariant)),
        "slq_vector": (["slq_vector"], list(range(spec.run.slq_vectors))),
        "lanczos_step": (["lanczos_step"], list(range(spec.run.lanczos_steps)))},
    attrs=lambda spec: {
        **PROBE_CONVENTION,
        "curvature_batch": f"the first {spec.run.curvature_batch_size} training examples, "
                           "train mode, noise frozen per probe",
        "eos_threshold": "2/lr (sgd), (2 + 2 momentum)/lr (momentum); NaN for adam",
        "layer_lambda_max": "largest Ritz value of the kernel-kernel Hessian block after "
                            "min(layer_lanczos_steps, kernel size) Lanczos steps; "
                            "layer_sharpness_scaled = weight_norm^2 * layer_lambda_max"},
    summary=(Column("hessian_lambda_max", "Hessian lambda_max", "last"),),
    finish=lambda rec: curvature.spectrum_records(rec["lanczos_alpha"], rec["lanczos_beta"]),
    model_records=lambda spec, hparams: curvature.optimizer_constants(
        spec.static["optimizer"], hparams),
    per_device_inputs=curvature.inputs,
    memory_per_model=lambda spec: curvature.bytes_per_model(
        spec.num_params, spec.run.lanczos_steps, spec.run.slq_vectors,
        spec.run.hutchinson_samples, spec.run.layer_lanczos_steps),
)
