"""What each in-loop probe costs, against the training steps it is made of.

  python benchmarks/probe_cost.py [--models=32] [--steps=200] [--repeats=3]

Workload (issue 5): K Ioffe MLPs (784-100-100-100-10, batch 60, SGD; random
MNIST-shaped data in memory), the default study's code path. Each probe runs
at every chunk end (cadence = scan_length) in its own program; a program with
every probe off is the baseline, all timed interleaved after one warm-up call.

  cost ratio = (extra seconds per probe event / gradient evaluations it needs)
               / (seconds per plain training step)

Gradient evaluations: gradient-ICS one per weight layer after the first (the
first layer's G' is G); landscape one per eta; curvature one per Hessian-vector
product counted as 2 (Lanczos steps x SLQ vectors + Hutchinson samples; a
sample's z^T H z is counted as the product it usually takes, though the probe
computes it forward over forward for less) plus one gradient for the
per-layer norms, on a probe batch of the training batch size. A plain training step is a gradient plus the update, so a ratio near 1
means a probe costs what the same number of training steps cost.

--default_study also times configs/default.py end to end with its probes on
and off (about two minutes each on a 2-core CPU).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icsjax import devices  # noqa: E402  (the CPU split must come before any computation)

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--models", type=int, default=32)
parser.add_argument("--norms", default="none,batchnorm")
parser.add_argument("--steps", type=int, default=200, help="steps per timed segment")
parser.add_argument("--scan_length", type=int, default=20, help="steps between probe events")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--default_study", action=argparse.BooleanOptionalAction, default=True)
ARGS = parser.parse_args()
SPLIT = devices.split_cpu_host(devices.auto_cpu_devices())

import jax  # noqa: E402

from study_path import GRADIENTS, JaxGroup, probe_config, timed, use_random_mnist  # noqa: E402


def probe_table():
  use_random_mnist()
  events = ARGS.steps // ARGS.scan_length
  print(f"{ARGS.models} models, {ARGS.steps} steps per segment, a probe event every "
        f"{ARGS.scan_length} steps ({events} per segment); medians of {ARGS.repeats} repeats")
  print(f"{'norm':10s} {'probe':10s} {'segment s':>9s} {'+s/event':>9s} {'grads':>6s} "
        f"{'s/step':>9s} {'ratio':>6s}")
  for norm in ARGS.norms.split(","):
    calls = {p: JaxGroup(probe_config(ARGS.models, norm, ARGS.steps, ARGS.scan_length, p))
             for p in ("", *GRADIENTS)}
    t = timed(calls, ARGS.repeats)
    per_step = t[""] / ARGS.steps
    print(f"{norm:10s} {'(off)':10s} {t['']:9.3f}")
    for probe, grads in GRADIENTS.items():
      extra = (t[probe] - t[""]) / events
      print(f"{norm:10s} {probe:10s} {t[probe]:9.3f} {extra:9.4f} {grads:6d} {per_step:9.5f} "
            f"{extra / grads / per_step:6.2f}")


def default_study_table():
  import tempfile
  from configs import default
  from icsjax import runner
  print("configs/default.py end to end (wall s, compilation included):")
  for label, probes_on in (("probes on", True), ("probes off", False)):
    c = default.get_config()
    if not probes_on:
      c.ics_every = c.landscape_every = c.curvature_every = 0
    with tempfile.TemporaryDirectory() as d:
      t = time.perf_counter()
      runner.run(c, d, progress=False, log=lambda *_: None)
      print(f"  {label:10s} {time.perf_counter() - t:7.1f}")


if __name__ == "__main__":
  print(f"jax {jax.__version__}: {jax.device_count()} {jax.devices()[0].platform} device(s) "
        f"({SPLIT})")
  probe_table()
  if ARGS.default_study:
    default_study_table()
