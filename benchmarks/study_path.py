"""The default study's code path on Ioffe's MNIST MLP with in-memory random
data: shared by the benchmarks, which must split the CPU before importing this."""

import statistics
import time

import numpy as np

from configs import ioffe_mnist
from icsjax import runner
from icsjax import study as study_lib
from icsjax import tfds_data

CLASSES = 10
NUM_TRAIN, NUM_TEST = 60_000, 600


def random_mnist(name, data_dir=None):
  """Random MNIST-shaped images, standing in for TFDS (which needs a download)."""
  del name, data_dir
  rng = np.random.default_rng(0)
  split = lambda n: (rng.random((n, 28, 28, 1), np.float32),
                     rng.integers(0, CLASSES, n).astype(np.int32))
  return split(NUM_TRAIN) + split(NUM_TEST)


def use_random_mnist():
  tfds_data.load_arrays = random_mnist


def learning_rates(k):
  return (0.5,) if k == 1 else tuple(0.05 * 1.5 ** i for i in range(8))


def study_config(k, norm, steps, scan_length=50):
  """K Ioffe MLPs (8 learning rates x K/8 seeds), one record and one evaluation
  per segment of `steps` steps, probes off."""
  c = ioffe_mnist.get_config()
  c.seeds = max(k // 8, 1)
  c.sweep.norm = (norm,)
  c.sweep.lr = learning_rates(k)
  c.monitor_size = 256
  c.scan_length = scan_length
  c.segment_steps = c.record_every = c.eval_every = steps
  c.ics_every = c.landscape_every = c.curvature_every = 0
  c.steps = steps * 10_000
  return c


class JaxGroup:
  """One group of the study path, advanced one segment per call."""

  def __init__(self, config):
    (self.run,) = runner.build_group_runs(study_lib.expand(config))
    self.steps, self.start = config.segment_steps, 0

  def __call__(self):
    runner.run_segment(self.run, self.start)
    self.start += self.steps


LANCZOS_STEPS, SLQ_VECTORS, HUTCHINSON_SAMPLES = 10, 2, 5
LR_MULTIPLES = (0.5, 1.0, 2.0, 4.0)
WEIGHT_LAYERS = 4


def probe_config(k, norm, steps, scan_length, probe=""):
  """study_config with the probe workload of issue 5, and `probe` (if any) at
  every chunk end."""
  c = study_config(k, norm, steps, scan_length)
  c.landscape_lr_multiples = LR_MULTIPLES
  c.curvature_batch_size = c.batch_size
  c.lanczos_steps, c.slq_vectors, c.hutchinson_samples = (LANCZOS_STEPS, SLQ_VECTORS,
                                                          HUTCHINSON_SAMPLES)
  if probe:
    c[f"{probe}_every"] = scan_length
  return c


# Gradient evaluations per probe event (benchmarks/probe_cost.py explains the count).
GRADIENTS = {"ics": WEIGHT_LAYERS - 1, "landscape": len(LR_MULTIPLES),
             "curvature": 2 * (LANCZOS_STEPS * SLQ_VECTORS + HUTCHINSON_SAMPLES) + 1}


def timed(calls: dict, repeats: int) -> dict:
  """Median seconds per call of each, interleaved, after one warm-up call each."""
  for call in calls.values():  # warm-up: compile
    call()
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      t = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(t) for name, t in times.items()}
