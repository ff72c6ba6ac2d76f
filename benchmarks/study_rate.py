"""Steady-state training rate of a study's groups, as the default study runs them.

  python benchmarks/study_rate.py --config=configs/default.py [--segments=3]

For each group: time to compile and run its first segment, then the median
wall time of the following segments (model-steps/s = models x steps / s).
Records are fetched to the host as in a real run, but nothing is written.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import jax  # noqa: E402

from icsjax import runner  # noqa: E402
from icsjax import study as study_lib  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/default.py", "Study config.")
flags.DEFINE_integer("segments", 3, "Timed segments per group (after the first).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = FLAGS.config
  study = study_lib.expand(config)
  t0 = time.perf_counter()
  runs = runner.build_group_runs(study)
  jax.block_until_ready([gr.state for gr in runs])
  print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
        f"jax {jax.__version__}; init of {len(runs)} groups: {time.perf_counter() - t0:.1f} s")
  seg = config.segment_steps
  print(f"{'group':28s} {'models':>6s} {'first segment s':>16s} {'model-steps/s':>14s}")
  for gr in runs:
    t = time.perf_counter()
    runner.run_segment(gr, 0)
    first = time.perf_counter() - t
    times = []
    for k in range(1, FLAGS.segments + 1):
      t = time.perf_counter()
      runner.run_segment(gr, k * seg)
      times.append(time.perf_counter() - t)
    rate = gr.group.size * seg / statistics.median(times)
    print(f"{gr.group.name:28s} {gr.group.size:6d} {first:16.2f} {rate:14,.0f}")


if __name__ == "__main__":
  app.run(main)
