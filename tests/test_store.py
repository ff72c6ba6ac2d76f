"""The workdir format: atomic segments, truncation, labelled loading."""

import numpy as np
import pytest

from conftest import tiny_config
from icsjax import runner
from icsjax import store


def test_records_load_with_named_dims_and_coords(tmp_path):
  c = tiny_config()
  c.sweep.norm = ("none", "l2_batchnorm")
  ds = runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  assert set(ds) == {"norm-none", "norm-l2_batchnorm"}
  bn = ds["norm-l2_batchnorm"]
  assert bn.train_loss.dims == ("model", "step")
  assert bn.preact_mean.dims == ("model", "record_step", "layer", "unit")
  assert bn.monitor_percentiles.dims == ("model", "record_step", "layer", "tracked_unit",
                                         "quantile")
  assert bn.test_accuracy_eval_mode.dims == ("model", "eval_step")
  np.testing.assert_array_equal(bn.step, np.arange(1, 41))
  np.testing.assert_array_equal(bn.record_step, [0, 10, 20, 30, 40])
  np.testing.assert_array_equal(bn.eval_step, [0, 20, 40])
  np.testing.assert_array_equal(bn.tracked_unit, [0, 3])
  np.testing.assert_allclose(bn["quantile"], [0.15, 0.5, 0.85])
  assert list(bn.variant.values) == ["l2_batchnorm"] * 8
  np.testing.assert_array_equal(bn.seed, [0, 1] * 4)
  np.testing.assert_allclose(bn.lr, np.repeat([0.05, 0.1, 0.2, 0.4], 2))
  np.testing.assert_array_equal(ds["norm-none"].model, np.arange(8))
  np.testing.assert_array_equal(bn.model, np.arange(8, 16))
  assert bn.attrs["monitor_mode"] == "train" and bn.attrs["test_examples_evaluated"] == 352
  assert "running_lp_scale" in bn and "running_var" not in bn
  assert "running_mean" not in ds["norm-none"]
  # percentiles are ordered
  p = bn.monitor_percentiles.values
  assert np.all(p[..., 0] <= p[..., 1]) and np.all(p[..., 1] <= p[..., 2])
  # the workdir holds its metadata
  for name in ("config.json", "grid.json", "versions.json", "summary.txt"):
    assert (tmp_path / "w" / name).is_file()
  assert not list((tmp_path / "w").rglob("*.tmp"))


def test_truncate_drops_later_segments(tmp_path):
  c = tiny_config()
  runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  group = "norm-batchnorm"
  assert len(store.segment_paths(tmp_path / "w", group)) == 2
  (store.group_dir(tmp_path / "w", group) / "segment_000001.npz.tmp").write_bytes(b"torn")
  store.truncate(tmp_path / "w", group, keep_segments=1)
  ds = store.load_group(tmp_path / "w", group)
  np.testing.assert_array_equal(ds.step, np.arange(1, 21))
  np.testing.assert_array_equal(ds.record_step, [0, 10, 20])
  assert not list(store.group_dir(tmp_path / "w", group).glob("*.tmp"))


def test_write_atomic_leaves_old_file_when_writer_fails(tmp_path):
  path = tmp_path / "f.bin"
  store.write_atomic(path, lambda f: f.write(b"old"))

  def broken(f):
    f.write(b"half")
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError):
    store.write_atomic(path, broken)
  assert path.read_bytes() == b"old"


def test_workdir_of_another_config_is_refused(tmp_path):
  c = tiny_config()
  runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  # The study's files; the lock file says which run last held the workdir.
  files = lambda: {p: p.read_bytes() for p in (tmp_path / "w").rglob("*")
                   if p.is_file() and p.name != store.LOCK_FILE}
  before = files()
  other = tiny_config(width=16)
  with pytest.raises(FileExistsError, match="different config"):
    runner.run(other, tmp_path / "w", progress=False, log=lambda *_: None)
  assert files() == before
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "x").write_text("x")
  with pytest.raises(FileExistsError, match="not empty"):
    runner.run(c, tmp_path / "junk", progress=False, log=lambda *_: None)
