"""Ioffe & Szegedy 2015 (arXiv:1502.03167), sec. 4.1: MNIST, 3 fully connected
hidden layers of 100 sigmoid units, batch norm before each nonlinearity,
minibatches of 60, 50,000 steps; Fig. 1 tracks the 15/50/85th percentiles of
a sigmoid input. The paper does not state the learning rate; SGD at 0.5 here.

  python -m icsjax.main --config=configs/ioffe_mnist.py --workdir=runs/ioffe_mnist

Needs MNIST prepared for TFDS once (README, "TFDS datasets").
Runtime: about 40 s on one H100 (65,727 / 48,602 model-steps/s without / with BN),
9 min on a 2-core CPU (1,140 / 853); benchmarks/study_rate.py --synthetic_data.
"""

import ml_collections

try:  # installed: the configs ship inside the package
  from icsjax.configs import default
except ImportError:  # a checkout, run from its root
  from configs import default


def get_config():
  c = default.get_config()
  c.dataset = "mnist"
  c.arch, c.width, c.depth, c.activation = "mlp", 100, 3, "sigmoid"
  c.batch_size = 60
  c.optimizer, c.lr = "sgd", 0.5
  c.monitor_size = 1000
  c.seeds = 5
  c.steps = 50_000
  c.scan_length = 100
  c.record_every = 500
  c.eval_every = 1000
  c.segment_steps = 5000
  c.ics_every = c.landscape_every = 1000
  c.curvature_every, c.curvature_batch_size = 5000, 1000
  c.sweep = ml_collections.ConfigDict()  # this config's own grid, not the default's
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (0.5,)
  # test-time evaluation (docs/measurements.md, "Test time"): its runtime here is unmeasured
  c.test_time_every = 0
  return c
