"""CPU-sized stand-in for Santurkar et al.'s VGG experiment: a small VGG-style
CNN on the embedded 8x8 digits, standard vs batch norm vs noisy batch norm.

  python -m icsjax.main --config=configs/small_vgg_digits.py --workdir=runs/small_vgg

Runtime: about 2 min on a 2-core CPU (306 / 293 / 193 model-steps/s for none /
BN / noisy BN, benchmarks/study_rate.py, jax 0.10.2).
"""

import ml_collections

try:  # installed: the configs ship inside the package
  from icsjax.configs import default
except ImportError:  # a checkout, run from its root
  from configs import default


def get_config():
  c = default.get_config()
  c.arch, c.activation = "vgg", "relu"
  c.channels, c.convs_per_stage = (8, 16), 1
  c.width, c.depth = 32, 1
  c.seeds = 3
  c.steps = 2000
  c.sweep = ml_collections.ConfigDict()  # this config's own grid, not the default's
  c.sweep.norm = ("none", "batchnorm", "noisy_batchnorm")
  c.sweep.lr = (0.1,)
  # test-time evaluation (docs/measurements.md, "Test time"): its runtime here is unmeasured
  c.test_time_every = 0
  return c
