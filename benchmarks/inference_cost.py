"""What the test-time evaluation (issue 7) costs, against one training segment.

  python benchmarks/inference_cost.py [--norm=batchnorm] [--segments=5] [--no-probes]

(Named for what it times, not test_*.py, so that nothing takes it for a test.)

One group of configs/default.py (2 learning rates x 5 seeds of one norm kind)
is built twice, with test time on (its default cadence, one evaluation per
segment) and off; after a compiling first segment each, segments of the two
alternate and the medians are compared:

  cost = (median segment with test time - median without) / median without

--probes keeps the default study's probes on in both (the default study's
real segment); without it they are off, so the ratio is against training alone.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icsjax import devices  # noqa: E402  (the CPU split must come before any computation)

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--norm", default="batchnorm")
parser.add_argument("--segments", type=int, default=5, help="timed segments of each")
parser.add_argument("--probes", action=argparse.BooleanOptionalAction, default=True)
ARGS = parser.parse_args()
SPLIT = devices.split_cpu_host(devices.auto_cpu_devices())

import jax  # noqa: E402

from configs import default  # noqa: E402
from icsjax import runner  # noqa: E402
from icsjax import study as study_lib  # noqa: E402


def group(test_time: bool):
  c = default.get_config()
  c.sweep.norm = (ARGS.norm,)
  del c.sweep["depth"]  # one group: Ioffe's depth-3 MLP
  c.steps = c.segment_steps * (ARGS.segments + 1)
  if not test_time:
    c.test_time_every = 0
  if not ARGS.probes:
    c.ics_every = c.landscape_every = c.curvature_every = 0
  (gr,) = runner.build_group_runs(study_lib.expand(c))
  return gr, c.segment_steps


def main():
  print(f"jax {jax.__version__}: {jax.device_count()} {jax.devices()[0].platform} device(s) "
        f"({SPLIT}); norm {ARGS.norm}, probes {'on' if ARGS.probes else 'off'}")
  runs = {label: group(label == "on") for label in ("off", "on")}
  for label, (gr, seg) in runs.items():
    t = time.perf_counter()
    jax.block_until_ready(runner.run_segment(gr, 0))
    print(f"test time {label:3s}: first segment (compilation included) "
          f"{time.perf_counter() - t:6.2f} s")
  times = {label: [] for label in runs}
  for i in range(1, ARGS.segments + 1):
    for label, (gr, seg) in runs.items():
      t = time.perf_counter()
      jax.block_until_ready(runner.run_segment(gr, i * seg))
      times[label].append(time.perf_counter() - t)
  med = {label: statistics.median(t) for label, t in times.items()}
  for label, t in times.items():
    print(f"test time {label:3s}: segment of {runs[label][1]} steps, median {med[label]:.3f} s "
          f"({', '.join(f'{x:.2f}' for x in t)})")
  extra = med["on"] - med["off"]
  print(f"one test-time evaluation: {extra:.3f} s = {extra / med['off']:.2f} x a training segment")


if __name__ == "__main__":
  main()
