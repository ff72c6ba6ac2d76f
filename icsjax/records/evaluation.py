"""Test-set evaluation: loss and accuracy with running statistics (eval mode)
and with each test batch normalised by its own statistics (train mode)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from icsjax import fields as f
from icsjax import losses
from icsjax.records.kind import Column, RecordKind


def compute(spec, fns, at):
  """Test loss/accuracy in eval mode (running statistics) and in train mode
  (batch statistics of test batches of the training batch size, no noise),
  both over the same num_test_batches * batch_size test examples."""
  state, data = at.state, at.data
  b, nb = spec.batch_size, spec.num_test_batches
  xs = data.test_x[:nb * b].reshape((nb, b) + data.test_x.shape[1:])
  ys = data.test_y[:nb * b].reshape((nb, b) + data.test_y.shape[1:])

  def one_batch(xy):
    x, y = xy
    out = {}
    for mode, train in (("eval_mode", False), ("train_mode", True)):
      o, _, _ = fns.apply(state.params, state.batch_stats, x, train=train)
      out[f"test_loss_{mode}"], acc = losses.task_loss(o, y, spec.task)
      if acc is not None:
        out[f"test_accuracy_{mode}"] = acc
    return out

  per_batch = jax.lax.map(one_batch, (xs, ys), batch_size=min(spec.run.eval_batch_chunk, nb))
  return jax.tree_util.tree_map(jnp.mean, per_batch)


KIND = RecordKind(
    name="eval", title="test evaluation", cadence="eval_every", compute=compute,
    optional=False, at_init=True,
    fields={"eval_every": f.Field("run", f.integer(1), "cadence of test evaluations")},
    attrs=lambda spec: {"test_examples_evaluated": spec.num_test_batches * spec.batch_size,
                        "train_mode_eval_batch_size": spec.batch_size},
    summary=(Column("test_loss_eval_mode", "test loss (eval)", "last"),
             Column("test_accuracy_eval_mode", "test acc (eval)", "last"),
             Column("test_accuracy_train_mode", "test acc (train-mode BN)", "last")),
)
