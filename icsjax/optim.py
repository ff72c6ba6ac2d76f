"""Optimizers whose hyperparameters are per-model values.

``optax.inject_hyperparams`` keeps the learning rate (and momentum, Adam's
betas) in the optimizer state, so under vmap every model carries its own
values and a sweep never recompiles.
"""

from __future__ import annotations

import optax

OPTIMIZERS = ("sgd", "momentum", "adam")


def make(kind: str, hp) -> optax.GradientTransformation:
  """The optimizer `kind` with hyperparameters from `hp` (scalars or tracers)."""
  if kind == "sgd":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=hp["lr"])
  if kind == "momentum":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=hp["lr"],
                                               momentum=hp["momentum"])
  if kind == "adam":
    return optax.inject_hyperparams(optax.adam)(learning_rate=hp["lr"], b1=hp["b1"],
                                                b2=hp["b2"], eps=hp["adam_eps"])
  raise ValueError(f"unknown optimizer {kind!r}")
