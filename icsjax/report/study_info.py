"""What a workdir measured, on what data: the report's first section.

Read from the workdir's config.json, grid.json and versions.json, so that a
smoke study on embedded data is never mistaken for a paper-scale one.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from icsjax import records as records_lib
from icsjax import shards
from icsjax import steps_reached
from icsjax import store
from icsjax import summary as summary_lib
from icsjax import workdir_lock
from icsjax import workdir_path
from icsjax.report import effects as fx
from icsjax.report import render as r
from icsjax.report import stats

DATASETS = {
    "digits": "the UCI 8x8 handwritten digits as scikit-learn bundles them (1,797 images, "
              "10 classes; embedded, no download)",
    "gaussian_regression": "synthetic Gaussian regression y = A x (embedded)",
    "mnist": "MNIST (TFDS, 60,000 training images)",
    "fashion_mnist": "Fashion-MNIST (TFDS, 60,000 training images)",
    "cifar10": "CIFAR-10 (TFDS, 50,000 training images)",
}
EMBEDDED = ("digits", "gaussian_regression")
# The papers' runs: Ioffe & Szegedy 50k steps on MNIST, Santurkar et al. 15k on
# CIFAR-10; a study well short of that is a smoke test of the tool.
PAPER_SCALE_STEPS = 10_000
# The records a study may switch off, in words.
OPTIONAL = tuple((k.cadence, k.title) for k in records_lib.KINDS if k.optional)


def read(workdir) -> dict:
  """config, grid and versions of a workdir ({} for a file that is absent), and
  `live`: the run writing it now, if any (`live_run`). Of a parent of shards
  (icsjax.shards): the whole study's config and grid, the first shard's
  versions, and a run writing any shard."""
  if shards.is_parent(workdir):
    joined = shards.join(workdir)
    each = [read(s) for s in joined.shards]
    return {"config": joined.config, "grid": joined.grid, "versions": each[0]["versions"],
            "live": next((i["live"] for i in each if i["live"]), None)}
  out = {}
  for name in ("config", "grid", "versions"):
    p = workdir_path.path(workdir) / f"{name}.json"
    out[name] = json.loads(p.read_text()) if p.exists() else {}
  out["live"] = live_run(workdir, out)
  return out


def live_run(workdir, info: dict) -> dict | None:
  """{"holder": (host, pid, started), "step": steps every group has recorded} of
  the run that holds the workdir's lock, or None when none does (without
  taking the lock: icsjax.workdir_lock)."""
  holder = workdir_lock.live_holder(workdir)
  if holder is None:
    return None
  groups = [g["name"] for g in info["grid"].get("groups", [])]
  segments = min((store.complete_segments(workdir, g) for g in groups), default=0)
  return {"holder": holder, "step": segments * info["config"].get("segment_steps", 0)}


def summary_text(workdir) -> str:
  """The workdir's summary.txt ('' before its run wrote it). Of a parent of shards:
  the same table over the joined groups, once every shard's run wrote its own."""
  workdir = workdir_path.path(workdir)
  if not shards.is_parent(workdir):
    path = workdir / "summary.txt"
    return path.read_text() if path.exists() else ""
  joined = shards.join(workdir)
  if not all((s / "summary.txt").exists() for s in joined.shards):
    return ""
  datasets = {g["name"]: store.load_group(joined.home[g["name"]], g["name"])
              for g in joined.grid["groups"]}
  return summary_lib.format_table(summary_lib.rows(datasets, joined.config["eval_every"])) + "\n"


def progress(ds: xr.Dataset) -> dict | None:
  """None for a study whose every model reached its planned steps; for a partial one
  (analysis.load; icsjax.steps_reached): {"planned": steps, "reached": which groups
  reached which step, "common": the last step every model with records reached,
  "not_started": groups with no finished segment}."""
  if not ds.attrs.get(steps_reached.PARTIAL):
    return None
  done = ds[steps_reached.STEPS_DONE].values
  groups = ds["group"].values if "group" in ds.coords else np.full(done.shape, "?")
  return {"planned": ds.attrs.get(steps_reached.STEPS_PLANNED),
          "reached": steps_reached.reached_text(ds),
          "common": int(done[done > 0].min()),
          "not_started": list(dict.fromkeys(groups[done == 0].tolist())),
          "unfinished_shards": ds.attrs.get(shards.UNFINISHED_SHARDS, "")}


def readable_part(ds: xr.Dataset) -> xr.Dataset:
  """What a report of a partial study reads: the models with records, over the steps
  all of them reached (`progress` says which); `ds` itself for a complete study."""
  if not ds.attrs.get(steps_reached.PARTIAL):
    return ds
  started = ds.isel(model=np.flatnonzero(ds[steps_reached.STEPS_DONE].values > 0))
  return steps_reached.on_common_steps(started)


def _steps_text(cfg: dict, partial: dict | None) -> str:
  if partial is None:
    return f"{cfg.get('steps', '?')} steps per model"
  return (f"{partial['planned']} steps planned per model, of which this partial study "
          f"reached: {partial['reached']}; read here up to step {partial['common']}")


def static_values(info: dict, field: str) -> list:
  """The values a static field takes over the groups (a swept one has several)."""
  groups = info["grid"].get("groups", [])
  vals = [g["static"][field] for g in groups if field in g.get("static", {})]
  if not vals and field in info["config"]:
    vals = [info["config"][field]]
  unique = dict.fromkeys(json.dumps(v) for v in vals)  # lists are not hashable
  return [json.loads(v) for v in unique]


def _joined(info, field) -> str:
  return " / ".join(str(v) for v in static_values(info, field)) or "?"


def _swept(ds) -> str:
  parts = [f"{k} = {', '.join(fx.value_text(v) for v in fx.level_values(ds, k))}"
           for k in fx.cell_levels(ds)]
  return "; ".join(parts) or "nothing besides the variant"


def is_smoke_scale(info: dict) -> bool:
  datasets = static_values(info, "dataset")
  return any(d in EMBEDDED for d in datasets) or \
      info["config"].get("steps", 0) < PAPER_SCALE_STEPS


def _data(info) -> str:
  return "; ".join(DATASETS.get(d, d) for d in static_values(info, "dataset"))


def blocks(ds: xr.Dataset, info: dict) -> list:
  cfg = info["config"]
  probes = "; ".join(f"{name} every {cfg[f]} steps" if cfg.get(f) else f"{name} off"
                     for f, name in OPTIONAL)
  seeds = len(fx.level_values(ds, fx.SEED))
  items = [
      f"**Data:** {_data(info)}; test accuracy over {ds.attrs.get('test_examples_evaluated', '?')} "
      f"test examples; percentiles over a fixed monitor set of "
      f"{ds.attrs.get('monitor_examples', '?')} training examples.",
      f"**Model:** `{_joined(info, 'arch')}`, depth {_joined(info, 'depth')} x width "
      f"{_joined(info, 'width')}, activation `{_joined(info, 'activation')}`; variants "
      f"(norm kinds): {', '.join(f'`{v}`' for v in fx.variants(ds))}.",
      f"**Training:** optimizer `{_joined(info, 'optimizer')}`, batch size "
      f"{_joined(info, 'batch_size')}, {_steps_text(cfg, info.get('partial'))}; swept: "
      f"{_swept(ds)}.",
      f"**Models:** {ds.sizes['model']} ({seeds} seed indices x "
      f"{ds.sizes['model'] // max(seeds, 1)} labelled settings) in "
      f"{len(info['grid'].get('groups', []))} compiled group(s); "
      f"{fx.diverged(ds)} diverged, {fx.failed(ds)} failed to train (the diverged "
      f"included; docs/measurements.md, \"Failure to train\").",
      f"**Records:** batch statistics every {cfg.get('record_every', '?')} steps (monitor "
      f"mode `{ds.attrs.get('monitor_mode', '?')}`), test evaluation every "
      f"{cfg.get('eval_every', '?')} steps; probes and evaluations: {probes}.",
  ]
  versions = info["versions"]
  if versions:
    devices = versions.get("devices", [])
    shown = ", ".join(devices[:4]) + (", ..." if len(devices) > 4 else "")
    items.append(f"**Software:** jax {versions.get('jax')}, flax {versions.get('flax')}, on "
                 f"{len(devices)} device(s) ({shown}).")
  return [r.Heading("What was measured"), r.Bullets(tuple(items)),
          r.Heading("How effects are estimated", 3), r.Para(METHOD)]


def warnings(ds: xr.Dataset, info: dict) -> list:
  """What a reader must know before reading any answer: a run still writing the
  workdir, scale, and seed count."""
  cfg = info["config"]
  seeds = len(fx.level_values(ds, fx.SEED))
  out = []
  live = info.get("live")
  if live:
    out.append(r.Note(
        f"this study is in progress, at step {live['step']} of {cfg.get('steps', '?')}: a run "
        f"is writing its workdir ({workdir_lock.holder_text(live['holder'])}). This report "
        f"reads the records written so far."))
  partial = info.get("partial")
  if partial:
    left_out = (f" Groups with no finished segment are left out: "
                f"{', '.join(partial['not_started'])}." if partial["not_started"] else "")
    if partial.get("unfinished_shards"):
      left_out += (f" The study ran as shards, and these have not finished: "
                   f"{partial['unfinished_shards']}; rerun (or resubmit) their commands "
                   f"to complete it.")
    out.append(r.Note(
        f"this study is partial: of the {partial['planned']} steps planned, the groups "
        f"reached: {partial['reached']}. Every figure, table and effect below reads the steps "
        f"up to {partial['common']}, the last that every model with records reached (a "
        f"time average over those steps, a final value at the last of them).{left_out}"))
  if is_smoke_scale(info):
    out.append(r.Note(
        f"this is a smoke-scale study ({_data(info)}; {_steps_text(cfg, partial)}). "
        "Its numbers show what the tool measures on this setup; they are not the papers' "
        "experiments (Ioffe & Szegedy 2015: MNIST, 50,000 steps; Santurkar et al. 2018: "
        "CIFAR-10, 15,000 steps) and do not reproduce or refute them."))
  if seeds < stats.MIN_SEEDS:
    out.append(r.Note(
        f"only {seeds} seed indices: every interval below rests on fewer than "
        f"{stats.MIN_SEEDS} paired differences, so its width is itself poorly known. "
        "Run more seeds (`--config.seeds=8`) before reading anything into it."))
  return out


METHOD = (
    "Every effect compares models that differ in one label only (the variant, or the "
    "depth) and share the seed index, hence the minibatch order (and, between variants, "
    "the initial weights of the layers they have in common). For each seed index the "
    "report takes one paired difference (a log-ratio for ratio measures, shown back as a "
    "ratio), then a two-sided 95% Student t interval over the seed indices. Effects are "
    "computed separately for every value of the other swept labels (e.g. one per learning "
    "rate); nothing is pooled across them. A pair in which either model diverged or lacks "
    "the record is left out, and the table says how many remain. An effect is called a "
    "reduction or an increase only when its interval excludes no change (0 for "
    "differences, 1 for ratios); otherwise it is inconclusive. Each question has one primary "
    "effect, declared in the code before any record is read; the primary effects of all "
    "questions, in every setting, form one family whose p-values are Holm-adjusted, and a "
    "primary verdict needs an adjusted p below 0.05. Every other effect is exploratory: "
    "its interval is not corrected for the many comparisons shown, so about one in twenty "
    "truly null exploratory effects will look real. A difference in accuracy smaller than "
    "one test example is below the test set's resolution and is called that, not a "
    "finding.")
