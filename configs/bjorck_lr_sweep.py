"""Bjorck, Gomes, Selman & Weinberger 2018 (arXiv:1806.02375): batch norm lets
a network train at learning rates that make the unnormalised one diverge.
The paper uses ResNet-110 on CIFAR-10; here icsjax's VGG on CIFAR-10, SGD,
batch 128, over learning rates from 1e-4 to 1, with and without batch norm.
Diverged models are flagged (`diverged_step`) and read NaN from then on.

  python -m icsjax.main --config=configs/bjorck_lr_sweep.py --workdir=runs/bjorck

Needs CIFAR-10 prepared for TFDS once (README, "TFDS datasets"); meant for a GPU/TPU.
Runtime: about 15 min on one H100 (192,000 model-steps at the 230 model-steps/s
measured for configs/santurkar_vgg_cifar10.py, plus compilation).
"""

import ml_collections

try:  # installed: the configs ship inside the package
  from icsjax.configs import santurkar_vgg_cifar10
except ImportError:  # a checkout, run from its root
  from configs import santurkar_vgg_cifar10


def get_config():
  c = santurkar_vgg_cifar10.get_config()
  c.seeds = 2
  c.steps = 6000
  c.segment_steps = 1500
  c.sweep = ml_collections.ConfigDict()  # this config's own grid, not the default's
  c.sweep.norm = ("none", "batchnorm")
  c.sweep.lr = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
  return c
