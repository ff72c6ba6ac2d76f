"""Santurkar, Tsipras, Ilyas & Madry 2018 (arXiv:1805.11604), sec. 2 / Fig. 2, 7:
a VGG network on CIFAR-10, standard vs batch norm vs "noisy" batch norm, SGD
with learning rate 0.1, batch 128, 15,000 steps.

The paper's VGG is VGG-16-like; here five stages of 3x3 convolutions with
(64, 128, 256, 512, 512) channels, two per stage, then one hidden dense layer
of 512 units (icsjax's VGG uses the same number of convs in every stage).

  python -m icsjax.main --config=configs/santurkar_vgg_cifar10.py --workdir=runs/vgg

Needs CIFAR-10 prepared for TFDS once (README, "TFDS datasets"); meant for a GPU/TPU.
Runtime: about 12 min on one H100 (230 model-steps/s measured for the
unnormalised group with benchmarks/study_rate.py --synthetic_data, jax 0.11.2;
135,000 model-steps in all; first segment with compilation 47 s per group).
"""

import ml_collections

try:  # installed: the configs ship inside the package
  from icsjax.configs import default
except ImportError:  # a checkout, run from its root
  from configs import default


def get_config():
  c = default.get_config()
  c.dataset = "cifar10"
  c.arch, c.activation = "vgg", "relu"
  c.channels, c.convs_per_stage = (64, 128, 256, 512, 512), 2
  c.width, c.depth = 512, 1
  c.batch_size = 128
  c.optimizer, c.lr = "sgd", 0.1
  c.monitor_size = 512
  c.seeds = 3
  c.steps = 15_000
  c.scan_length = 50
  c.record_every = 250
  c.eval_every = 500
  c.segment_steps = 1500
  c.ics_every = c.landscape_every = 250
  c.curvature_every, c.curvature_batch_size = 1500, 128
  c.eval_batch_chunk = 8
  c.sweep = ml_collections.ConfigDict()  # this config's own grid, not the default's
  c.sweep.norm = ("none", "batchnorm", "noisy_batchnorm")
  c.sweep.lr = (0.1,)
  # test-time evaluation (docs/measurements.md, "Test time"): its runtime here is unmeasured
  c.test_time_every = 0
  return c
