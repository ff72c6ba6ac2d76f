"""Steady-state training rate of a study's groups, as the default study runs them.

  python benchmarks/study_rate.py --config=configs/default.py [--segments=3]

For each group: time to compile and run its first segment, then the median
wall time of the following segments (model-steps/s = models x steps / s).
Records are fetched to the host as in a real run, but nothing is written.
With --synthetic_data, TFDS datasets are replaced by random images of their
real split sizes and shapes (the rate depends on shapes only), so paper-scale
configs can be timed where the data is not prepared.
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

import numpy as np  # noqa: E402

from icsjax import runner  # noqa: E402
from icsjax import tfds_data  # noqa: E402
from icsjax import study as study_lib  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/default.py", "Study config.")
flags.DEFINE_integer("segments", 3, "Timed segments per group (after the first).")
flags.DEFINE_bool("synthetic_data", False, "Random stand-ins for TFDS datasets.")
FLAGS = flags.FLAGS


def random_images(name, data_dir=None):
  del data_dir
  rng = np.random.default_rng(0)
  shape, classes = tfds_data.IMAGE_SHAPES[name], tfds_data.NUM_CLASSES[name]
  split = lambda n: (rng.random((n,) + shape, np.float32),
                     rng.integers(0, classes, n).astype(np.int32))
  n_train, n_test = tfds_data.SPLIT_SIZES[name]
  return split(n_train) + split(n_test)


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.synthetic_data:
    tfds_data.load_arrays = random_images
  study = study_lib.expand(config)
  t0 = time.perf_counter()
  runs = runner.build_group_runs(study)
  jax.block_until_ready([gr.state for gr in runs])
  print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
        f"jax {jax.__version__}; init of {len(runs)} groups: {time.perf_counter() - t0:.1f} s")
  seg = config.segment_steps
  print(f"{config.dataset}, {config.arch}; segments of {seg} steps; {config.steps} steps "
        f"of every group")
  print(f"{'group':28s} {'models':>6s} {'first segment s':>16s} {'model-steps/s':>14s}")
  total = time.perf_counter() - t0
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
    total += first + (config.steps - seg) * gr.group.size / rate
    print(f"{gr.group.name:28s} {gr.group.size:6d} {first:16.2f} {rate:14,.0f}")
  print(f"extrapolated study time (first segments + steady rate): {total / 60:.1f} min")


if __name__ == "__main__":
  app.run(main)
