"""Models: Ioffe's MLP and the deep linear network, with a norm before each nonlinearity.

Every model returns ``(outputs, taps)``: ``taps[i] = (pre_norm, nonlin_input)``
for hidden layer i, so records read the exact activations training used.
Layers carry fixed names (``dense_0``, ``norm_0``, ..., ``dense_out``): Flax
derives each layer's init key from its name, so models of one seed share the
initial weights of every identically shaped layer, whatever their norm.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from icsjax.norms import LP_ORDER, Norm
from icsjax.study import BATCH_NORM_KINDS

ACTIVATION_FNS = {"sigmoid": nn.sigmoid, "relu": nn.relu, "tanh": jnp.tanh,
                  "identity": lambda z: z}


class MLP(nn.Module):
  """depth x (Dense -> Norm -> activation), then a Dense output layer.

  With activation 'identity' this is the deep linear network of Santurkar et
  al. 2018 (depth hidden layers + output = depth + 1 linear layers).
  """
  width: int
  depth: int
  num_outputs: int
  activation: str = "sigmoid"
  norm: str = "none"
  norm_eps: float = 1e-5
  lp_center: bool = True

  @property
  def norm_centres_batch(self) -> bool:
    """A batch norm that subtracts the batch mean cancels the bias before it: the
    bias would get a gradient of pure rounding error, which Adam blows up to a
    full step, so such layers have none (as in Ioffe & Szegedy 2015, sec. 3.2)."""
    return self.norm in BATCH_NORM_KINDS and (self.norm not in LP_ORDER or self.lp_center)

  @nn.compact
  def __call__(self, x, *, train: bool, hp):
    act = ACTIVATION_FNS[self.activation]
    taps = []
    for i in range(self.depth):
      pre = nn.Dense(self.width, use_bias=not self.norm_centres_batch, name=f"dense_{i}")(x)
      z = Norm(self.norm, self.norm_eps, self.lp_center, name=f"norm_{i}")(
          pre, train=train, hp=hp)
      taps.append((pre, z))
      x = act(z)
    return nn.Dense(self.num_outputs, name="dense_out")(x), tuple(taps)


def build(static: dict, num_outputs: int) -> nn.Module:
  """The model of a group's static config."""
  activation = "identity" if static["arch"] == "dln" else static["activation"]
  return MLP(width=static["width"], depth=static["depth"], num_outputs=num_outputs,
             activation=activation, norm=static["norm"], norm_eps=static["norm_eps"],
             lp_center=static["lp_center"])
