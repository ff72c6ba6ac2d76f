"""A study run as shards (some of its groups each, `runner.run(groups=...)`) joins
into the same dataset and report as the study run whole; a shard's workdir
keeps its subset; a parent whose shards are not one study's split is refused."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from conftest import tiny_config
from icsjax import analysis
from icsjax import runner
from icsjax import shards
from icsjax import steps_reached
from icsjax import store
from icsjax import study as study_lib
from icsjax.fields import ConfigError
from icsjax.report import __main__ as report_main
import icsjax.report
from launch import shards as launch_shards
from launch import tasks as launch_tasks

pytestmark = pytest.mark.xdist_group("sharded_study")  # one worker runs the studies once
QUIET = {"progress": False, "log": lambda *_: None, "tensorboard": False}


def _config():
  c = tiny_config(steps=40, segment_steps=20, seeds=2)
  c.sweep.norm = ("none", "batchnorm", "layernorm")
  c.sweep.lr = (0.1,)
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{"whole": the study run whole, "parent": the same study as 2 shards, "split":
  each shard's group names}: launch's split, which puts groups 0 and 2 in shard 0
  (equal costs, longest first, ties to the lowest shard), so the study order
  interleaves the shards."""
  root = tmp_path_factory.mktemp("shards")
  c = _config()
  runner.run(c, root / "whole", **QUIET)
  split = launch_shards.split(study_lib.expand(c), 2, "the tiny study")
  for i, names in enumerate(split):
    runner.run(c, root / "parent" / shards.folder_name(i, 2), groups=names, **QUIET)
  return {"whole": root / "whole", "parent": root / "parent", "split": split}


def test_the_split_interleaves_the_study_order(runs):
  assert runs["split"] == [("norm-none", "norm-layernorm"), ("norm-batchnorm",)]
  assert [launch_tasks.shard_suffix(i, 2) for i in range(2)] == [
      p.name for p in shards.shard_folders(runs["parent"])]


def test_joined_shards_equal_the_whole_study_bitwise(runs):
  whole, joined = analysis.load(runs["whole"]), analysis.load(runs["parent"])
  assert joined.identical(whole)
  assert list(joined.data_vars) == list(whole.data_vars)
  for name in [*whole.data_vars, *whole.coords]:
    a, b = whole[name].values, joined[name].values
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype != object:
      assert a.tobytes() == b.tobytes(), name
  assert list(joined["group"].values) == [g for g in ("norm-none", "norm-batchnorm",
                                                      "norm-layernorm") for _ in range(2)]
  assert not joined.attrs["partial"] and shards.UNFINISHED_SHARDS not in joined.attrs


def test_joined_report_equals_the_whole_studys(runs, tmp_path):
  texts = {}
  for name in ("whole", "parent"):
    md = icsjax.report.write(runs[name], out=tmp_path / name)
    texts[name] = md.read_text().replace(str(runs[name]), "WORKDIR")
  assert texts["parent"] == texts["whole"]
  assert (runs["whole"] / "summary.txt").read_text() in texts["parent"]
  assert report_main.main([str(runs["parent"]), "--out", str(tmp_path / "cli")]) == 0


def test_a_saved_model_of_a_sharded_study_is_the_whole_studys(runs):
  labels = {"variant": "layernorm", "seed": 1}
  whole, joined = (analysis.load_model(runs[k], step=20, **labels) for k in ("whole", "parent"))
  assert joined.group == whole.group == "norm-layernorm" and joined.labels == whole.labels
  leaves = [jax.tree_util.tree_leaves(m.variables) for m in (whole, joined)]
  assert len(leaves[0]) == len(leaves[1]) > 0
  assert all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(*leaves))


def test_a_shard_keeps_its_groups_and_resumes(runs):
  shard = runs["parent"] / shards.folder_name(1, 2)
  grid = store.read_json(shard / "grid.json")
  assert [g["name"] for g in grid["groups"]] == ["norm-batchnorm"]
  assert grid[shards.STUDY_GROUPS] == ["norm-none", "norm-batchnorm", "norm-layernorm"]
  assert [g["model_ids"] for g in grid["groups"]] == [[2, 3]]  # the whole study's ids
  assert shards.STUDY_GROUPS not in store.read_json(runs["whole"] / "grid.json")
  before = {p: p.read_bytes() for p in sorted(shard.rglob("segment_*.npz"))}
  runner.run(_config(), shard, groups=["norm-batchnorm"], **QUIET)  # the same command
  assert {p: p.read_bytes() for p in sorted(shard.rglob("segment_*.npz"))} == before


@pytest.mark.parametrize("groups, where, message", [
    (["norm-batchnorm", "norm-none"], "parent/shard-1-of-2",
     "holds the shard --groups=norm-batchnorm of this study, not the shard "
     "--groups=norm-none,norm-batchnorm"),
    (None, "parent/shard-1-of-2", "holds the shard --groups=norm-batchnorm of this study, "
     "not the whole study"),
    (["norm-none", "norm-batchnorm", "norm-layernorm"], "whole",
     "holds the whole study of this study, not the shard --groups=norm-none,norm-batchnorm,"
     "norm-layernorm"),
])
def test_another_subset_on_a_workdir_is_refused(runs, groups, where, message):
  workdir = runs["parent"].parent / where
  before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
  with pytest.raises(FileExistsError, match=message) as e:
    runner.run(_config(), workdir, groups=groups, **QUIET)
  assert "\n" not in str(e.value)
  assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before


@pytest.mark.parametrize("groups, problem", [
    (["norm-none", "norm-lp"], "names 'norm-lp', which is not a group of this study"),
    (["a", "norm-none", "b"], "names 'a', 'b', which are not groups of this study"),
    ([], "names no group"),
    (["norm-none", "norm-none"], "repeats 'norm-none'"),
])
def test_an_unknown_group_is_refused_before_the_workdir_is_made(tmp_path, groups, problem):
  with pytest.raises(ConfigError) as e:
    runner.run(_config(), tmp_path / "w", groups=groups, **QUIET)
  assert str(e.value) == (f"--groups={','.join(groups)} {problem}; its groups: norm-none, "
                          f"norm-batchnorm, norm-layernorm")
  assert not (tmp_path / "w").exists()


def test_the_command_line_refuses_an_unknown_group_in_one_line(tmp_path):
  workdir = tmp_path / "w"
  out = subprocess.run(
      [sys.executable, "-m", "icsjax.main", "--config=configs/default.py",
       f"--workdir={workdir}", "--groups=depth-3_norm-none,norm-none"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT})
  assert out.returncode == 2
  assert out.stderr == ("error: --groups=depth-3_norm-none,norm-none names 'norm-none', which "
                        "is not a group of this study; its groups: depth-3_norm-none, "
                        "depth-3_norm-batchnorm, depth-3_norm-noisy_batchnorm, "
                        "depth-8_norm-none, depth-8_norm-batchnorm, "
                        "depth-8_norm-noisy_batchnorm\n")
  assert not workdir.exists()


def _copy(runs, tmp_path):
  parent = tmp_path / "parent"
  shutil.copytree(runs["parent"], parent)
  return parent


def _edit_json(path, edit):
  data = json.loads(path.read_text())
  edit(data)
  path.write_text(json.dumps(data))


def _drop_shard(parent):
  shutil.rmtree(parent / "shard-1-of-2")


def _add_other_split(parent):
  shutil.copytree(parent / "shard-0-of-2", parent / "shard-0-of-3")


def _other_config(parent):
  _edit_json(parent / "shard-1-of-2" / "config.json", lambda c: c.update(width=16))


def _group_in_two_shards(parent):
  shutil.copytree(parent / "shard-1-of-2" / "records" / "norm-batchnorm",
                  parent / "shard-0-of-2" / "records" / "norm-batchnorm")
  whole_grid = store.read_json(parent / "shard-1-of-2" / "grid.json")
  _edit_json(parent / "shard-0-of-2" / "grid.json",
             lambda g: g["groups"].insert(1, whole_grid["groups"][0]))


def _unstarted_shard(parent):
  for p in (parent / "shard-1-of-2").iterdir():
    shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.mark.parametrize("spoil, message", [
    (_drop_shard, re.escape("lacks the study records of shard-1-of-2 (of 2 shards, "
                            "shard-0-of-2 to shard-1-of-2): its run has not started yet or "
                            "its folder was not copied here")),
    (_unstarted_shard, "lacks the study records of shard-1-of-2 "),
    (_add_other_split, re.escape("holds shards of 2 different splits (of 2, of 3)")),
    (_other_config, "shard-1-of-2 and shard-0-of-2 under .* ran different configs "
     r"\(width: 16 vs 8\)"),
    (_group_in_two_shards, "group norm-batchnorm ran in both shard-0-of-2 and shard-1-of-2"),
])
def test_shards_of_no_one_study_are_refused_in_one_line(runs, tmp_path, capsys, spoil,
                                                        message):
  parent = _copy(runs, tmp_path)
  spoil(parent)
  with pytest.raises(shards.ShardsDisagree, match=message) as e:
    analysis.load(parent)
  assert "\n" not in str(e.value)
  assert report_main.main([str(parent)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1


def test_an_unfinished_shard_is_named(runs, tmp_path):
  parent = _copy(runs, tmp_path)
  shard = parent / "shard-0-of-2"
  store.truncate(shard, "norm-layernorm", 1)  # killed after its first segment
  (shard / "summary.txt").unlink()  # a killed run never writes it
  ds = analysis.load(parent)
  assert ds.attrs["partial"] and ds.attrs[shards.UNFINISHED_SHARDS] == "shard-0-of-2"
  assert dict(zip(ds["group"].values, ds["steps_done"].values)) == {
      "norm-none": 40, "norm-batchnorm": 40, "norm-layernorm": 20}
  # up to step 20, which every model reached, the records are the whole study's
  cut, whole = (steps_reached.upto(d, 20).drop_vars(steps_reached.STEPS_DONE)
                for d in (ds, analysis.load(runs["whole"])))
  over_time = [v for v in whole.data_vars
               if set(whole[v].dims) & set(steps_reached.time_axes(whole))]
  assert len(over_time) > 5 and cut[over_time].equals(whole[over_time])
  text = icsjax.report.write(parent).read_text()
  assert "these have not finished: shard-0-of-2; rerun (or resubmit)" in text
  for home, group in (("shard-1-of-2", "norm-batchnorm"), ("shard-0-of-2", "norm-none"),
                      ("shard-0-of-2", "norm-layernorm")):
    store.truncate(parent / home, group, 0)
  with pytest.raises(store.NoRecords, match="none with a finished segment yet"):
    analysis.load(parent)
