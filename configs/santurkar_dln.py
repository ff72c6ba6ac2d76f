"""Santurkar et al. 2018 (arXiv:1805.11604), sec. 3 / App.: a 25-layer deep
linear network (24 normalised hidden layers of 10 units + a linear output)
on synthetic Gaussian regression y = A x, trained by full-batch gradient
descent, with and without batch norm, over a range of learning rates.

  python -m icsjax.main --config=configs/santurkar_dln.py --workdir=runs/dln

Embedded data: runs offline. Runtime: about 40 s on one H100 (47,147 / 24,001
model-steps/s without / with BN, benchmarks/study_rate.py); about 35 min on a
2-core CPU (configs/small_dln.py's measured 919 / 615 model-steps/s at batch
256, scaled to batch 1024).
"""

import ml_collections

try:  # installed: the configs ship inside the package
  from icsjax.configs import default
except ImportError:  # a checkout, run from its root
  from configs import default


def get_config():
  c = default.get_config()
  c.dataset = "gaussian_regression"
  c.regression_dim, c.regression_train_size, c.regression_test_size = 10, 1024, 1024
  c.arch, c.activation = "dln", "identity"
  c.width, c.depth = 10, 24
  c.batch_size = 1024  # full batch: gradient descent
  c.optimizer = "sgd"
  c.tracked_units = (0, 1, 2)
  c.seeds = 5
  c.steps = 10_000
  c.scan_length = 100
  c.record_every = 500
  c.eval_every = 500
  c.segment_steps = 2000
  c.ics_every = c.landscape_every = 500
  c.landscape_lr_multiples = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # the paper's [0.01, 30] x lr
  c.curvature_every, c.curvature_batch_size = 2000, 1024  # the full batch
  c.sweep = ml_collections.ConfigDict()  # this config's own grid, not the default's
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (1e-3, 3e-3, 1e-2, 3e-2)
  # test-time evaluation (docs/measurements.md, "Test time"): its runtime here is unmeasured
  c.test_time_every = 0
  return c
