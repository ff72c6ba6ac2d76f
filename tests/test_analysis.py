"""icsjax.analysis.load: every record of every group, selectable by label."""

import numpy as np
import pytest

from conftest import tiny_config
from icsjax import analysis
from icsjax import runner
from icsjax import store


@pytest.mark.slow
def test_load_joins_groups_and_selects_by_label(tmp_path):
  c = tiny_config(steps=20, ics_every=10, landscape_every=10)
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.width = (8, 12)
  c.sweep.lr = (0.1, 0.2)
  runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  ds = analysis.load(tmp_path / "w")
  groups = store.load(tmp_path / "w")
  assert len(groups) == 4 and ds.sizes["model"] == 16 and ds.sizes["unit"] == 12
  assert sorted(ds.model_id.values) == list(range(16))
  picked = ds.sel(variant="batchnorm", width=12, lr=0.2)
  assert list(picked.seed.values) == [0, 1]
  g = groups["width-12_norm-batchnorm"]
  # Every record round-trips with its model's labels; the one level left after
  # the selection (seed) names the model axis.
  for name, var in g.data_vars.items():
    want = var.isel(model=np.flatnonzero(g.lr.values == 0.2))
    other = {d: want[d].values for d in want.dims if d != "model"}
    got = picked[name].sel(other).transpose(*["seed" if d == "model" else d for d in want.dims])
    np.testing.assert_array_equal(got.values, want.values, err_msg=name)
  np.testing.assert_array_equal(picked.layer_units.values, [[12, 12], [12, 12]])
  narrow = ds.sel(variant="none", width=8, lr=0.1)
  assert np.isnan(narrow.train_loss).sum() == 0
  assert "running_mean" in ds and np.isnan(narrow.running_mean).all()  # no BN: no statistics
  assert np.isnan(narrow.preact_mean.sel(unit=slice(8, None))).all()  # 8 of 12 units
  assert "curvature_step" not in ds.dims  # only some probes on
  # Step 0, the initial state, leads the records that take it, not the probes of an update.
  assert list(ds.record_step.values) == [0, 10, 20] and list(ds.eval_step.values) == [0, 20]
  assert list(ds.ics_step.values) == [10, 20]
