"""The task losses: mean cross-entropy (classification) or squared error (regression)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from icsjax.data import REGRESSION


def task_loss(outputs, y, task: str):
  """Mean loss over the batch and, for classification, accuracy (else None).

  Cross-entropy against one-hot labels: its gradient is elementwise, where the
  integer-label form's is a scatter, a separate slow op on a CPU.
  """
  if task == REGRESSION:
    return jnp.mean(jnp.sum(jnp.square(outputs - y), axis=-1)), None
  one_hot = jax.nn.one_hot(y, outputs.shape[-1], dtype=outputs.dtype)
  loss = jnp.mean(optax.softmax_cross_entropy(outputs, one_hot))
  return loss, jnp.mean(jnp.argmax(outputs, axis=-1) == y)


def per_example(task: str, outputs, y) -> dict:
  """{loss, accuracy (classification)} of each example."""
  loss, acc = jax.vmap(lambda o, t: task_loss(o[None], t[None], task))(outputs, y)
  return {"loss": loss} if acc is None else {"loss": loss, "accuracy": acc}
