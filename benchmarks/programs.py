"""Padded programs against separate ones, side by side in one run, and the cost
model's estimates of both.

  python benchmarks/programs.py --config=configs/default.py [--segments=2]

The study's families (groups equal but for width, depth and channels;
icsjax/programs.py) are built both ways: one program per group, and one
padded program per family. A segment of a way runs as the runner runs one:
every program dispatched, then every one collected (programs on different
devices run at once: icsjax.placement.device_blocks). The first segment
(compiling every program) is timed, then --segments more, the two ways
interleaved so that both see the same machine. Per way: the time the
study's steps would take (first segment + the remaining segments at the
median steady time), and the cost model's estimate (icsjax.programs.
estimate_seconds with this backend's COSTS); then the measured ratio and each
padded family's padding waste. Records are fetched to the host as in a real
run; nothing is written.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from icsjax import devices  # noqa: E402  (the CPU split, before JAX computes)

config_flags.DEFINE_config_file("config", "configs/default.py", "Study config.")
flags.DEFINE_integer("segments", 2, "Timed steady segments per program (after the first).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  devices.split_cpu_host(config.cpu_devices or devices.auto_cpu_devices())
  import jax
  from icsjax import programs
  from icsjax import runner
  from icsjax import study as study_lib

  ways = {}
  for mode in ("separate", "padded"):
    c = config.copy_and_resolve_references()
    c.programs = mode
    study = study_lib.expand(c)
    plan, _ = programs.plan(study, jax.default_backend())
    ways[mode] = runner.build_group_runs(study, programs=plan)
  seg, steps = config.segment_steps, config.steps

  def segment(runs, k):
    """One segment of every program, as the runner runs it: all dispatched, then
    collected (programs on different devices run at once)."""
    t = time.perf_counter()
    pending = [runner.dispatch(gr, k * seg) for gr in runs]
    for gr, queued in zip(runs, pending):
      runner.collect(gr, queued)
    return time.perf_counter() - t

  first = {mode: segment(runs, 0) for mode, runs in ways.items()}
  steady = {mode: [] for mode in ways}
  for k in range(1, FLAGS.segments + 1):
    for mode, runs in ways.items():
      steady[mode].append(segment(runs, k))
  costs = programs.COSTS.get(jax.default_backend(), programs.COSTS["gpu"])
  print(f"{jax.devices()[0].platform}, {jax.device_count()} device(s), jax {jax.__version__}; "
        f"{steps} steps in segments of {seg}; steady: median of {FLAGS.segments} segments")
  print(f"{'programs':9s} {'count':>5s} {'first segment s':>15s} {'steady segment s':>16s} "
        f"{'study s':>8s} {'model s':>8s}")
  total = {}
  for mode, runs in ways.items():
    total[mode] = first[mode] + (steps // seg - 1) * statistics.median(steady[mode])
    estimate = sum(programs.estimate_seconds(gr.spec.static, gr.size,
                                             [g.static for g in gr.groups], steps, costs)
                   for gr in runs)
    print(f"{mode:9s} {len(runs):5d} {first[mode]:15.1f} {statistics.median(steady[mode]):16.2f} "
          f"{total[mode]:8.1f} {estimate:8.1f}")
  wastes = [f"{gr.program.name}: {programs.padding_waste(gr.groups, gr.spec.static):.0%}"
            for gr in ways["padded"] if gr.program.padded]
  print(f"separate / padded: {total['separate'] / total['padded']:.2f} measured; padding "
        f"waste: {', '.join(wastes)}")

if __name__ == "__main__":
  app.run(main)
