"""Steady-state training rate of a study's groups, as the default study runs them.

  python benchmarks/study_rate.py --config=configs/default.py [--segments=3]

For each group: time to compile and run its first segment, then the median
wall time of the following segments (model-steps/s = models x steps / s).
Records are fetched to the host as in a real run, but nothing is written.
With --synthetic_data, TFDS datasets are replaced by random images of their
real split sizes and shapes (the rate depends on shapes only), so paper-scale
configs can be timed where the data is not prepared.

Each line is a compiled program: one group, or several padded into one
(`--config.programs`, icsjax/programs.py). --fit_costs fits the cost model's
constants of this backend (icsjax.programs.COSTS) to the programs timed, by
least squares over them: compile time (first segment less a steady one) =
compile_seconds + compile_seconds_per_layer x weight layers, and seconds per
step = step_seconds_per_layer x weight layers + FLOPs / flops_per_second.
Time separate programs of different sizes for it, e.g.

  python benchmarks/study_rate.py --config=configs/default.py \
    --config.programs=separate --config.sweep.norm="('batchnorm',)" --segments=2 --fit_costs
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

from icsjax import programs  # noqa: E402
from icsjax import runner  # noqa: E402
from icsjax import tfds_data  # noqa: E402
from icsjax import study as study_lib  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/default.py", "Study config.")
flags.DEFINE_integer("segments", 3, "Timed segments per group (after the first).")
flags.DEFINE_bool("synthetic_data", False, "Random stand-ins for TFDS datasets.")
flags.DEFINE_bool("fit_costs", False, "Fit icsjax.programs.COSTS to the programs timed.")
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
  plan, choices = runner.plan(study)
  for choice in choices:
    print(f"programs: {choice.describe()}")
  runs = runner.build_group_runs(study, programs=plan)
  jax.block_until_ready([gr.state for gr in runs])
  print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), "
        f"jax {jax.__version__}; init of {len(runs)} groups: {time.perf_counter() - t0:.1f} s")
  seg = config.segment_steps
  print(f"{config.dataset}, {config.arch}; segments of {seg} steps; {config.steps} steps "
        f"of every group")
  print(f"{'program':40s} {'models':>6s} {'first segment s':>16s} {'model-steps/s':>14s}")
  total = time.perf_counter() - t0
  fits = []  # (compile s, steady s per step, weight layers, FLOPs per step) per program
  for gr in runs:
    t = time.perf_counter()
    runner.run_program_segment(gr, 0)
    first = time.perf_counter() - t
    times = []
    for k in range(1, FLAGS.segments + 1):
      t = time.perf_counter()
      runner.run_program_segment(gr, k * seg)
      times.append(time.perf_counter() - t)
    steady = statistics.median(times)
    rate = gr.size * seg / steady
    total += first + (config.steps - seg) * gr.size / rate
    fits.append((first - steady, steady / seg, programs.weight_layers(gr.spec.static),
                 programs.step_flops(gr.spec.static, gr.size)))
    print(f"{gr.program.name:40s} {gr.size:6d} {first:16.2f} {rate:14,.0f}")
  print(f"extrapolated study time (first segments + steady rate): {total / 60:.1f} min")
  if FLAGS.fit_costs:
    print(f"COSTS[{jax.default_backend()!r}] = {fit_costs(fits)}")


def least_squares(rows, values) -> list[float]:
  """Non-negative coefficients of values ~ rows @ coefficients: a coefficient
  the fit makes negative is too small to measure, and is taken as 0."""
  rows, values = np.asarray(rows, float), np.asarray(values, float)
  coefficients = np.linalg.lstsq(rows, values, rcond=None)[0]
  if (coefficients < 0).any():
    keep = coefficients >= 0
    coefficients = np.zeros(len(coefficients))
    coefficients[keep] = np.linalg.lstsq(rows[:, keep], values, rcond=None)[0]
  return [float(c) for c in coefficients]


def fit_costs(fits) -> dict:
  """icsjax.programs.COSTS of this backend, fitted to separate programs:
  compile = base + per layer x weight layers; seconds per step = per layer x
  weight layers + FLOPs / rate."""
  base, per_layer = least_squares([[1.0, f[2]] for f in fits], [f[0] for f in fits])
  step_layer, per_flop = least_squares([[f[2], f[3]] for f in fits], [f[1] for f in fits])
  return {"step_seconds_per_layer": float(f"{step_layer:.3g}"),
          "compile_seconds": float(f"{base:.3g}"),
          "compile_seconds_per_layer": float(f"{per_layer:.3g}"),
          "flops_per_second": float(f"{1 / per_flop:.3g}") if per_flop else float("inf")}

if __name__ == "__main__":
  app.run(main)
