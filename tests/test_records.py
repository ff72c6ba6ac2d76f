"""The registry of record kinds: a new kind is one declaration and its compute
function, and validation, the loop, the store, loading and the summary follow."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from icsjax import fields as f
from icsjax import records as records_lib
from icsjax import runner
from icsjax import study
from icsjax.records.kind import Column, RecordKind
from icsjax.study import ConfigError


def kernel_norms(spec, fns, at):
  """The README's example: each weight layer's kernel norm after the update."""
  params = at.state.params
  return {"kernel_norm": jnp.stack([jnp.linalg.norm(params[name]["kernel"].ravel())
                                    for name in spec.weight_layers])}


KERNEL_NORMS = RecordKind(
    name="kernel_norms", title="kernel norms", cadence="kernel_norms_every",
    compute=kernel_norms,
    fields={"kernel_norms_every": f.Field("run", f.integer(0),
                                          "steps between kernel-norm records (0: off)")},
    dims={"kernel_norm": ("weight_layer",)},
    coords=lambda spec: {"weight_layer": (["weight_layer"], list(spec.weight_layers))},
    attrs=lambda spec: {"kernel_norms": "the Frobenius norm of each layer's kernel"},
    summary=(Column("kernel_norm", "kernel norm", "last"),),
)


def register(monkeypatch, kind):
  """What adding records/<kind>.py and a line in KINDS does at import."""
  kinds = records_lib.KINDS + (kind,)
  monkeypatch.setattr(records_lib, "KINDS", kinds)
  monkeypatch.setattr(records_lib, "BY_NAME", {k.name: k for k in kinds})
  fields = {**study.CORE_FIELDS, **records_lib.fields()}
  monkeypatch.setattr(study, "FIELDS", fields)
  monkeypatch.setattr(study, "RUN_FIELDS", tuple(k for k, v in fields.items()
                                                 if v.role == "run"))


@pytest.fixture
def registered(monkeypatch):
  register(monkeypatch, KERNEL_NORMS)


def check_kernel_norms(ds, workdir):
  """The records of a kernel_norms kind (every 10 steps of tiny_config(steps=20))
  are what they say: the final kernels' norms, from the checkpoint."""
  assert ds.kernel_norm.dims == ("model", "kernel_norms_step", "weight_layer")
  assert list(ds.kernel_norms_step.values) == [10, 20]
  assert list(ds.weight_layer.values) == ["dense_0", "dense_1", "dense_out"]
  assert ds.attrs["kernel_norms"] == "the Frobenius norm of each layer's kernel"
  from icsjax import analysis
  for m, lr in enumerate(ds.lr.values):
    model = analysis.load_model(workdir, variant="batchnorm", seed=int(ds.seed[m]),
                                lr=float(lr))
    want = [np.linalg.norm(np.asarray(model.variables["params"][n]["kernel"]))
            for n in ("dense_0", "dense_1", "dense_out")]
    np.testing.assert_allclose(ds.kernel_norm.values[m, -1], want, rtol=1e-6)
  assert "kernel norm" in (workdir / "summary.txt").read_text()


def test_a_registered_kind_is_validated_computed_stored_loaded_and_summarised(
    registered, tmp_path):
  c = tiny_config(steps=20)
  c.kernel_norms_every = 3
  with pytest.raises(ConfigError, match="kernel_norms_every=3 must be a multiple of "
                                        "scan_length=5"):
    study.validate(c)
  c.kernel_norms_every = 10
  (ds,) = runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None).values()
  check_kernel_norms(ds, tmp_path / "w")


def test_every_kind_declares_a_cadence_field_and_dims_of_its_own():
  names = [k.name for k in records_lib.KINDS]
  assert len(set(names)) == len(names)
  axes = [k.axis for k in records_lib.KINDS] + [records_lib.PER_STEP_AXIS]
  assert len(set(axes)) == len(axes)
  for kind in records_lib.KINDS:
    assert kind.cadence in kind.fields and kind.fields[kind.cadence].role == "run"
    assert kind.cadence in study.FIELDS


def test_kinds_at_init_lead_the_first_segment_with_step_0():
  run = study.run_spec(tiny_config(ics_every=10, curvature_every=20))
  # Not curvature: its report measures read training.
  assert [k.name for k in records_lib.active(run)
          if records_lib.has_step_0_slot(k.name)] == ["record", "eval"]
  first, second = records_lib.time_coords(run, 0), records_lib.time_coords(run, 20)
  assert {k: list(v) for k, v in first.items() if k != "step"} == {
      "record_step": [0, 10, 20], "eval_step": [0, 20], "ics_step": [10, 20],
      "curvature_step": [20]}
  assert list(second["record_step"]) == [30, 40] and list(second["eval_step"]) == [40]
  assert list(first["step"]) == list(range(1, 21))
  # Every segment returns a step-0 slot for these kinds; those after the first drop it.
  later = {"record": {"v": np.arange(6.).reshape(2, 3)}, "ics": {"w": np.ones((2, 2))}}
  got = records_lib.without_step_0(later)
  np.testing.assert_array_equal(got["record"]["v"], [[1, 2], [4, 5]])
  assert got["ics"]["w"] is later["ics"]["w"]
