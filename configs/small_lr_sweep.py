"""CPU-sized learning-rate sweep after Bjorck et al. 2018: a ReLU MLP on the
embedded digits at learning rates from 0.01 to 10, with and without batch norm.

  python -m icsjax.main --config=configs/small_lr_sweep.py --workdir=runs/small_lr

Runtime: about 1 min on a 2-core CPU (2,251 / 1,539 model-steps/s without / with BN,
benchmarks/study_rate.py, jax 0.10.2).
"""

import ml_collections

try:  # installed: the configs ship inside the package
  from icsjax.configs import default
except ImportError:  # a checkout, run from its root
  from configs import default


def get_config():
  c = default.get_config()
  c.activation = "relu"
  c.seeds = 3
  c.steps = 2000
  c.sweep = ml_collections.ConfigDict()  # this config's own grid, not the default's
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
  # test-time evaluation (docs/measurements.md, "Test time"): its runtime here is unmeasured
  c.test_time_every = 0
  return c
