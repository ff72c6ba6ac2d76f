"""Are two workdirs of the same config the same study? (issue 19's acceptance (a))

  python benchmarks/same_records.py OLD_WORKDIR NEW_WORKDIR [--rtol=1e-6]

Compares every record array of every segment of every group, and every
group's training state in every checkpoint step; it imports nothing from
icsjax, so it reads workdirs written by any revision.

Must match exactly: config.json, grid.json, summary.txt, the groups, each
group's schema.json (an added or missing variable fails), segment files, and
the array names of each segment. versions.json (library versions, devices)
is not compared.

Bitwise (same dtype, shape and bytes; NaN equals NaN whatever its payload):
the training records train_*, preact_*, running_*, monitor_*, nonlin_input_*,
diverged_step, the evaluation records test_* (bitwise in practice: two runs
of one revision write the same bytes) and the failure verdict made from them
(failed, failure, chance_p_value, mse_ratio), the time coordinates (step,
record_step, ...), and the checkpoints.

Within --rtol (every other array: the probes ics_*, landscape_*, hessian_*,
slq_*, lanczos_*, probe_*, weight_norm, optimizer_momentum, eos_threshold,
and the test-time stats_mode_*, shift_*): elementwise
|a - b| <= rtol * max(|a|, |b|, F), NaN where both are NaN, where the floor F
is the largest finite magnitude in the same record (same model and time
step, over the record's inner dims: its layers, Lanczos steps, lr multiples,
corruptions ...). Such a record's entries come out of the same float32
reductions, so an entry near zero (an SLQ weight, a Lanczos beta that has
converged, a cosine near 0) carries rounding error on the record's scale,
not its own; for a scalar record F is the value itself (a plain relative
test). The printed "max rel diff" is max |a - b| / max(|a|, |b|, F).

Prints one line per group x record kind x rule (bitwise or rtol) and one per
group's checkpoints: max rel diff and "bitwise", "within rtol" or "DIFFERS";
then the differing variables, and a verdict line. Exit status 1 on any
failure.
"""

import argparse
import json
import logging
import pathlib
import re
import sys

import numpy as np

BITWISE_PREFIXES = ("train_", "preact_", "running_", "monitor_", "nonlin_input_",
                    "diverged_step", "test_", "failed", "failure", "chance_p_value",
                    "mse_ratio")
# Time axis (dims[1] of a variable) -> the record kind that icsjax.store names it by.
KINDS = {"step": "per_step", "record_step": "record", "eval_step": "eval", "ics_step": "ics",
         "landscape_step": "landscape", "curvature_step": "curvature",
         "test_time_step": "test_time"}
SEGMENT_RE = re.compile(r"segment_\d{6}\.npz$")


class Report:
  """Collects failures and the per-line maxima."""

  def __init__(self):
    self.failures: list[str] = []
    self.lines: dict[tuple, list] = {}  # (group, kind, rule) -> [max rel, ok, exact, n]

  def fail(self, msg: str) -> None:
    self.failures.append(msg)

  def add(self, key: tuple, rel: float, ok: bool, exact: bool) -> None:
    line = self.lines.setdefault(key, [0.0, True, True, 0])
    line[0] = max(line[0], rel)
    line[1] &= ok
    line[2] &= exact
    line[3] += 1


def rule_of(name: str, is_time_coord: bool) -> str:
  return "bitwise" if is_time_coord or name.startswith(BITWISE_PREFIXES) else "rtol"


def kind_of(dims) -> str:
  if dims is None:
    return "time coords"
  if list(dims) == ["model"]:
    return "model"
  return KINDS.get(dims[1], dims[1]) if len(dims) > 1 else "other"


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
  """Same dtype, shape and bytes, except that any NaN equals any NaN."""
  if a.dtype != b.dtype or a.shape != b.shape:
    return False
  return a.tobytes() == b.tobytes() or not unequal(a, b).any()


def unequal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Where a and b differ in bits (any NaN equals any NaN)."""
  if a.dtype.kind != "f":
    return a != b
  as_bits = np.dtype(f"u{a.dtype.itemsize}")
  return (a.view(as_bits) != b.view(as_bits)) & ~(np.isnan(a) & np.isnan(b))


def rel_diff(a: np.ndarray, b: np.ndarray, inner_axes: tuple) -> float:
  """max |a - b| / max(|a|, |b|, F), F the record's largest finite magnitude (module
  docstring); 0 where equal (NaN = NaN, inf = inf), inf where only one is NaN or inf."""
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
  mag = np.maximum(np.abs(a64), np.abs(b64))
  finite = np.where(np.isfinite(mag), mag, 0.0)
  floor = finite.max(axis=inner_axes, keepdims=True) if inner_axes else finite
  with np.errstate(invalid="ignore", divide="ignore"):
    rel = np.abs(a64 - b64) / np.maximum(mag, floor)
  rel = np.where(same, 0.0, np.where(np.isnan(rel), np.inf, rel))
  return float(rel.max()) if rel.size else 0.0


def compare_array(rep: Report, group: str, seg: str, name: str, dims, a, b, rtol: float):
  rule = rule_of(name, dims is None)
  key = (group, kind_of(dims), rule)
  where = f"{group}/{seg}: {name}"
  if a.dtype != b.dtype or a.shape != b.shape:
    rep.add(key, np.inf, False, False)
    rep.fail(f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
    return
  exact = bitwise_equal(a, b)
  inner = tuple(range(2, a.ndim)) if dims is not None and len(dims) > 2 else ()
  rel = 0.0 if exact else rel_diff(a, b, inner)
  ok = exact if rule == "bitwise" else rel <= rtol
  rep.add(key, rel, ok, exact)
  if not ok:
    mask = unequal(a, b)
    rep.fail(f"{where}: {rule} fails, {mask.sum()} of {a.size} entries differ (first at "
             f"{np.argwhere(mask)[0].tolist()}), max rel diff {rel:.3g}")


def compare_records(rep: Report, old: pathlib.Path, new: pathlib.Path, group: str, rtol):
  d_old, d_new = old / "records" / group, new / "records" / group
  schema_old = json.loads((d_old / "schema.json").read_text())
  schema_new = json.loads((d_new / "schema.json").read_text())
  v_old, v_new = schema_old["variables"], schema_new["variables"]
  for name in sorted(set(v_old) - set(v_new)):
    rep.fail(f"{group}: variable {name} missing in NEW")
  for name in sorted(set(v_new) - set(v_old)):
    rep.fail(f"{group}: variable {name} added in NEW")
  if schema_old != schema_new:
    for part in schema_old.keys() | schema_new.keys():
      for k in set(schema_old.get(part, {})) | set(schema_new.get(part, {})):
        if schema_old.get(part, {}).get(k) != schema_new.get(part, {}).get(k):
          rep.fail(f"{group}: schema.json {part}.{k} differs")
  segs_old = sorted(p.name for p in d_old.iterdir() if SEGMENT_RE.match(p.name))
  segs_new = sorted(p.name for p in d_new.iterdir() if SEGMENT_RE.match(p.name))
  if segs_old != segs_new:
    rep.fail(f"{group}: segment files differ: {sorted(set(segs_old) ^ set(segs_new))}")
  for seg in sorted(set(segs_old) & set(segs_new)):
    with np.load(d_old / seg) as z_old, np.load(d_new / seg) as z_new:
      if set(z_old.files) != set(z_new.files):
        rep.fail(f"{group}/{seg}: arrays differ: {sorted(set(z_old.files) ^ set(z_new.files))}")
      for name in sorted(set(z_old.files) & set(z_new.files)):
        compare_array(rep, group, seg, name, v_old.get(name), z_old[name], z_new[name], rtol)


def open_checkpoints(workdir: pathlib.Path):
  """(orbax manager, steps): opened read-only, the structure read from the files."""
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(
      workdir.absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(create=False, read_only=True))
  return manager, sorted(manager.all_steps())


def read_step(manager, step: int, groups) -> dict:
  import orbax.checkpoint as ocp
  args = {g: ocp.args.StandardRestore() for g in groups}
  args["meta"] = ocp.args.JsonRestore()
  return manager.restore(step, args=ocp.args.Composite(**args))


def flatten(tree) -> dict:
  import jax
  return {jax.tree_util.keystr(p): np.asarray(leaf)
          for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def compare_checkpoints(rep: Report, old: pathlib.Path, new: pathlib.Path, groups) -> None:
  present = [(d / "checkpoints").exists() for d in (old, new)]
  if present[0] != present[1]:
    rep.fail(f"checkpoints/ only in {'OLD' if present[0] else 'NEW'}")
  if not all(present):
    return
  m_old, steps_old = open_checkpoints(old)
  m_new, steps_new = open_checkpoints(new)
  if steps_old != steps_new:
    rep.fail(f"checkpoint steps differ: OLD {steps_old}, NEW {steps_new}")
  for step in sorted(set(steps_old) & set(steps_new)):
    got_old, got_new = read_step(m_old, step, groups), read_step(m_new, step, groups)
    if got_old["meta"] != got_new["meta"]:
      rep.fail(f"checkpoint {step}: meta differs (checksums or config fingerprint)")
    for g in groups:
      t_old, t_new = flatten(got_old[g]), flatten(got_new[g])
      if t_old.keys() != t_new.keys():
        rep.fail(f"checkpoint {step}/{g}: state leaves differ: "
                 f"{sorted(t_old.keys() ^ t_new.keys())}")
      for path in sorted(t_old.keys() & t_new.keys()):
        a, b = t_old[path], t_new[path]
        ok = bitwise_equal(a, b)
        rel = 0.0 if ok else (rel_diff(a, b, ()) if a.shape == b.shape else np.inf)
        rep.add((g, "checkpoints", "bitwise"), rel, ok, ok)
        if not ok:
          rep.fail(f"checkpoint {step}/{g}{path}: not bitwise equal, max rel diff {rel:.3g}")
  m_old.close()
  m_new.close()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("old", type=pathlib.Path, help="OLD_WORKDIR")
  parser.add_argument("new", type=pathlib.Path, help="NEW_WORKDIR")
  parser.add_argument("--rtol", type=float, default=1e-6)
  args = parser.parse_args()
  logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only notices
  rep = Report()
  for name in ("config.json", "grid.json", "summary.txt"):
    texts = [(d / name).read_text() if (d / name).exists() else None for d in (args.old, args.new)]
    if texts[0] != texts[1]:
      rep.fail(f"{name} differs" + ("" if None not in texts else " (missing in one)"))
  grid = json.loads((args.old / "grid.json").read_text())
  groups = [g["name"] for g in grid["groups"]]
  on_disk = [sorted(p.name for p in (d / "records").iterdir()) for d in (args.old, args.new)]
  if on_disk[0] != on_disk[1]:
    rep.fail(f"record groups differ: OLD {on_disk[0]}, NEW {on_disk[1]}")
  for g in groups:
    if all((d / "records" / g / "schema.json").exists() for d in (args.old, args.new)):
      compare_records(rep, args.old, args.new, g, args.rtol)
    else:
      rep.fail(f"{g}: records/{g}/schema.json missing")
  compare_checkpoints(rep, args.old, args.new, groups)

  print(f"{'group':24s} {'kind':12s} {'rule':8s} {'arrays':>6s} {'max rel diff':>12s}  verdict")
  order = {k: i for i, k in enumerate(["time coords", "model", *KINDS.values(), "checkpoints"])}
  lines = sorted(rep.lines.items(), key=lambda kv: (groups.index(kv[0][0]) if kv[0][0] in groups
                                                     else len(groups), order.get(kv[0][1], 99)))
  for (g, kind, rule), (rel, ok, exact, n) in lines:
    verdict = "DIFFERS" if not ok else "bitwise" if exact else "within rtol"
    print(f"{g:24s} {kind:12s} {rule:8s} {n:6d} {rel:12.3g}  {verdict}")
  for msg in rep.failures[:50]:
    print(f"FAIL {msg}")
  if len(rep.failures) > 50:
    print(f"FAIL ... and {len(rep.failures) - 50} more")
  if rep.failures:
    print(f"verdict: DIFFERENT ({len(rep.failures)} failures), {args.old} vs {args.new}")
    return 1
  how = ("every array bitwise equal" if all(line[2] for line in rep.lines.values())
         else f"bitwise where required, the rest within rtol={args.rtol:g}")
  print(f"verdict: SAME ({how}), {args.old} vs {args.new}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
