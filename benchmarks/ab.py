"""One benchmark on two revisions, interleaved: is the new one as fast? (issue 19 (b))

  python benchmarks/ab.py --old=REV --new=REV [--repeats=3] [--logdir=DIR] -- SCRIPT [ARGS...]

  e.g. python benchmarks/ab.py --old=6fb87d7 --new=HEAD -- probe_cost.py --no-default_study
       python benchmarks/ab.py --old=6fb87d7 --new=HEAD -- vs_pytorch.py --ks=128

Checks each revision out as a detached git worktree in a temporary directory
(removed at the end; a revision is a commit: uncommitted changes are not
measured), then runs `python benchmarks/SCRIPT ARGS --repeats=1` there, as a
subprocess in that worktree with this environment and interpreter,
alternately old, new, old, new, ... --repeats times each, so that drift of
a shared machine hits both alike. Every run's output goes to --logdir.
(--inner_repeats=N passes --repeats=N instead: each run then reports its
own median of N; give no --repeats after --.) `ab.py --tabulate
--logdir=DIR -- SCRIPT` prints the table of a log dir's runs again.

Prints a table: a row per measured line of the script's output (key, the
old and new medians over the repeats, each run's value, and new/old), then
the rows whose new/old is below --threshold. new/old is a SPEED ratio:
above 1 the new revision is faster, below 1 slower. For each script:

  vs_pytorch.py  row "NORM K=K": the icsjax study's model-steps/s (higher is
                 better): new/old = new rate / old rate. (The other methods
                 do not depend on the revision; vs_pytorch needs torch.)
  probe_cost.py  row "NORM PROBE": the probe's cost ratio (seconds per
                 gradient evaluation of a probe event over seconds of a
                 training step; LOWER is better): new/old = old ratio / new
                 ratio. Row "NORM (off) segment s": seconds of a training
                 segment without probes (the ratios' denominator, so a change
                 of training speed shows too): old s / new s. With
                 --default_study, rows "default study, probes on/off": wall s,
                 old / new.

Exit status 1 if a run fails, or if a row is below --threshold or missing in
one revision.
"""

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^-?[\d,]*\.?\d+$")
STDERR = "\n# stderr\n"  # separates a log's stdout from its stderr


def is_number(token: str) -> bool:
  return bool(NUMBER.match(token))


def rows_vs_pytorch(out: str) -> dict[str, tuple[float, bool]]:
  """{row: (value, higher is better)}: icsjax's model-steps/s per norm and K."""
  rows = {}
  for line in out.splitlines():
    t = line.split()
    if len(t) >= 3 and t[1].isdigit() and is_number(t[2]):  # NORM K icsjax JAX-seq ...
      rows[f"{t[0]} K={t[1]}"] = (float(t[2].replace(",", "")), True)
  return rows


def rows_probe_cost(out: str) -> dict[str, tuple[float, bool]]:
  """{row: (value, higher is better)}: each probe's cost ratio, the probe-free
  segment's seconds, and the default study's wall seconds."""
  rows = {}
  for line in out.splitlines():
    t = line.split()
    if len(t) == 7 and all(is_number(x) for x in t[2:]):  # NORM PROBE seg +s grads s/step ratio
      rows[f"{t[0]} {t[1]}"] = (float(t[6]), False)
    elif len(t) == 3 and t[1] == "(off)" and is_number(t[2]):  # NORM (off) segment-s
      rows[f"{t[0]} (off) segment s"] = (float(t[2]), False)
    elif len(t) == 3 and t[0] == "probes" and is_number(t[2]):  # probes on|off wall-s
      rows[f"default study, probes {t[1]}"] = (float(t[2]), False)
  return rows


PARSERS = {"vs_pytorch.py": rows_vs_pytorch, "probe_cost.py": rows_probe_cost}


def git(*args: str, cwd=REPO) -> str:
  return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                        text=True).stdout.strip()


def speed(old: float, new: float, higher_is_better: bool) -> float:
  """new/old as a speed ratio: > 1 when new is faster; NaN unless both are positive
  (a cost ratio at or below 0 is timing noise larger than the probe's cost)."""
  if old <= 0 or new <= 0:
    return float("nan")
  return new / old if higher_is_better else old / new


def run_interleaved(shas: dict, script: str, cmd_args: list, repeats: int, python: str,
                    logdir: pathlib.Path) -> dict | None:
  """{"old"|"new": [rows of each run]}, runs alternating old, new, ...; None if one fails."""
  values = {label: [] for label in shas}
  with tempfile.TemporaryDirectory(prefix="ab-worktrees-") as tmp:
    trees = {label: pathlib.Path(tmp) / label for label in shas}
    try:
      for label, tree in trees.items():
        git("worktree", "add", "--detach", str(tree), shas[label])
      for i in range(repeats):
        for label, tree in trees.items():
          cmd = [python, f"benchmarks/{script}", *cmd_args]
          start = time.perf_counter()
          run = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
          wall = time.perf_counter() - start
          log = logdir / f"{i + 1:02d}_{label}.log"
          log.write_text(f"# {shas[label]} in {tree}\n# {' '.join(cmd)}\n# exit {run.returncode},"
                         f" {wall:.1f} s\n{run.stdout}{STDERR}{run.stderr}")
          rows = PARSERS[script](run.stdout)
          print(f"run {i + 1} {label}: exit {run.returncode}, {wall:.0f} s, {len(rows)} rows, "
                f"load average {os.getloadavg()[0]:.1f} ({log.name})", flush=True)
          if run.returncode or not rows:
            print(run.stderr[-3000:], file=sys.stderr)
            return None
          values[label].append(rows)
    finally:
      for tree in trees.values():
        if tree.exists():
          git("worktree", "remove", "--force", str(tree))
      git("worktree", "prune")
  return values


def read_logs(logdir: pathlib.Path, script: str) -> dict:
  """The runs' rows again, from a --logdir's NN_old.log and NN_new.log."""
  return {label: [PARSERS[script](p.read_text().split(STDERR)[0])
                  for p in sorted(logdir.glob(f"[0-9][0-9]_{label}.log"))]
          for label in ("old", "new")}


def table(values: dict, threshold: float) -> list[str]:
  """Prints the medians and new/old of each row; returns the flagged rows."""
  keys = list(dict.fromkeys(k for runs in values.values() for rows in runs for k in rows))
  n = {label: len(runs) for label, runs in values.items()}
  print(f"\nnew/old = speed ratio (> 1: new faster); medians of {n['old']} old and {n['new']} "
        f"new runs")
  print(f"{'row':28s} {'better':>6s} {'old':>10s} {'new':>10s} {'new/old':>8s}  "
        f"old runs | new runs")
  flagged = []
  for key in keys:
    per = {label: [rows[key][0] for rows in runs if key in rows] for label, runs in values.items()}
    if len(per["old"]) != n["old"] or len(per["new"]) != n["new"]:
      flagged.append(f"{key}: in {len(per['old'])} old and {len(per['new'])} new runs")
      continue
    higher = next(rows[key][1] for rows in values["old"])
    med = {label: statistics.median(v) for label, v in per.items()}
    ratio = speed(med["old"], med["new"], higher)
    mark = "" if ratio >= threshold else f"  < {threshold}"
    runs = " ".join(f"{v:g}" for v in per["old"]) + " | " + " ".join(f"{v:g}" for v in per["new"])
    print(f"{key:28s} {'higher' if higher else 'lower':>6s} {med['old']:10.4g} "
          f"{med['new']:10.4g} {ratio:8.3f}  {runs}{mark}")
    if mark:
      flagged.append(f"{key}: new/old {ratio:.3f}"
                     + (" (a median <= 0: timing noise)" if ratio != ratio else ""))
  return flagged


def main():
  argv = sys.argv[1:]
  split = argv.index("--") if "--" in argv else len(argv)
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      usage="ab.py --old=REV --new=REV [--repeats=3] [--logdir=DIR] -- SCRIPT [ARGS...]")
  parser.add_argument("--old", help="the old revision (any git commit-ish)")
  parser.add_argument("--new", help="the new revision")
  parser.add_argument("--repeats", type=int, default=3, help="runs of each revision")
  parser.add_argument("--inner_repeats", type=int, default=1,
                      help="--repeats passed to the benchmark itself")
  parser.add_argument("--threshold", type=float, default=0.95, help="flag new/old below this")
  parser.add_argument("--logdir", default="", help="raw outputs (default: a new temp dir)")
  parser.add_argument("--tabulate", action="store_true",
                      help="run nothing: print the table of the runs already in --logdir")
  parser.add_argument("--python", default=sys.executable, help="the interpreter to run with")
  args = parser.parse_args(argv[:split])
  if not argv[split + 1:]:
    parser.error("name a benchmark script after --, e.g. -- probe_cost.py")
  script = pathlib.Path(argv[split + 1]).name
  if script not in PARSERS:
    parser.error(f"knows how to read {sorted(PARSERS)}, not {script}")
  if args.tabulate:
    if not args.logdir:
      parser.error("--tabulate reads --logdir")
    values = read_logs(pathlib.Path(args.logdir), script)
  else:
    if not (args.old and args.new):
      parser.error("--old and --new are required")
    shas = {label: git("rev-parse", "--verify", f"{rev}^{{commit}}")
            for label, rev in (("old", args.old), ("new", args.new))}
    logdir = pathlib.Path(args.logdir or tempfile.mkdtemp(prefix="ab-logs-"))
    logdir.mkdir(parents=True, exist_ok=True)
    cmd_args = [*argv[split + 2:], f"--repeats={args.inner_repeats}"]
    print(f"old {args.old} = {shas['old'][:10]}, new {args.new} = {shas['new'][:10]}; {script} "
          f"{' '.join(cmd_args)}, {args.repeats} interleaved runs each; raw outputs in {logdir}",
          flush=True)
    values = run_interleaved(shas, script, cmd_args, args.repeats, args.python, logdir)
    if values is None:
      print(f"a run failed; see {logdir}")
      return 1
  flagged = table(values, args.threshold)
  for f in flagged:
    print(f"FLAGGED {f}")
  print(f"verdict: {'every row' if not flagged else f'{len(flagged)} row(s) NOT'} at new/old >= "
        f"{args.threshold}")
  return 1 if flagged else 0


if __name__ == "__main__":
  sys.exit(main())
