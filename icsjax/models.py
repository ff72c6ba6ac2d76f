"""Models: Ioffe's MLP, the deep linear network and a VGG-style CNN, each with
a norm before every nonlinearity.

Every model returns ``(outputs, taps)``: ``taps[i] = (pre_norm, nonlin_input)``
for normalised layer i (in ``layer_names`` order), so records read the exact
activations training used. Layers carry fixed names (``conv_0``, ``dense_0``,
``norm_0``, ..., ``dense_out``): Flax derives each layer's init key from its
name, so models of one seed share the initial weights of every identically
shaped layer, whatever their norm (and of one initialiser; docs/measurements.md,
"Initialisation").
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from icsjax.norms import BATCH_NORM_KINDS, LP_ORDER, PROGRAM_VARIANT, Norm, variant_index

ARCHS = ("mlp", "dln", "vgg")
ACTIVATION_FNS = {"sigmoid": nn.sigmoid, "relu": nn.relu, "tanh": jnp.tanh,
                  "identity": lambda z: z}
ACTIVATIONS = tuple(ACTIVATION_FNS)
# Kernel initialisers of every Dense and Conv layer (docs/measurements.md,
# "Initialisation"). lecun_normal is Flax's default, the same function.
KERNEL_INITS = {"lecun_normal": nn.initializers.lecun_normal(),
                "glorot_uniform": nn.initializers.glorot_uniform(),
                "he_normal": nn.initializers.he_normal(),
                "orthogonal": nn.initializers.orthogonal()}
INITS = tuple(KERNEL_INITS)

# Where a unit counts as saturated, as a test on its nonlinearity input z: where
# the activation passes on (almost) no gradient (docs/measurements.md, "Signal
# propagation and saturation"). sigmoid: |z| > 4, slope σ'(4) = 0.018, 7% of its
# maximum 1/4 (Glorot & Bengio 2010 watch sigmoid units pinned near 0 or 1);
# tanh: |z| > 2, the same 7% (tanh(z) = 2σ(2z) − 1, so the same cut); relu:
# z <= 0, slope 0 (inactive, and "dead" where it stays so); identity: slope 1
# everywhere, never saturated. (text of the test, the test)
SATURATION = {"sigmoid": ("|z| > 4", lambda z: jnp.abs(z) > 4),
              "tanh": ("|z| > 2", lambda z: jnp.abs(z) > 2),
              "relu": ("z <= 0", lambda z: z <= 0),
              "identity": ("never", lambda z: jnp.zeros(z.shape, bool))}


def centres_batch(norm: str, lp_center: bool) -> bool:
  """A batch norm that subtracts the batch mean cancels the bias before it: the
  bias would get a gradient of pure rounding error, which Adam blows up to a
  full step, so such layers have none (as in Ioffe & Szegedy 2015, sec. 3.2)."""
  return norm in BATCH_NORM_KINDS and (norm not in LP_ORDER or lp_center)


class _NormedLayers(nn.Module):
  """Shared by the models: their common fields and the norm-then-activation block."""
  width: int
  depth: int
  num_outputs: int
  activation: str = "sigmoid"
  norm: str = "none"
  norm_eps: float = 1e-5
  lp_center: bool = True
  kernel_init: str = "lecun_normal"  # a KERNEL_INITS name (Module.init is taken)
  # A padded program (icsjax.programs): per variant (a logical group), per layer,
  # the units that are real; 0: the layer is absent (the identity). Empty: every
  # unit and layer is real, and the model computes exactly as it always did.
  variant_units: tuple[tuple[int, ...], ...] = ()

  @property
  def kernel_initializer(self):
    return KERNEL_INITS[self.kernel_init]

  def dense(self, units, name):
    return nn.Dense(units, use_bias=self.use_bias, kernel_init=self.kernel_initializer,
                    name=name)

  def real_units(self, i, hp):
    """This model's real units in layer i (traced; 0: the layer is absent), or None
    outside a padded program (and in calls for shapes only, which pass no hp)."""
    if not self.variant_units or PROGRAM_VARIANT not in hp:
      return None
    return jnp.asarray([units[i] for units in self.variant_units])[variant_index(hp)]

  def normed(self, pre, i, train, hp, taps):
    """Norm -> activation of layer i. In a padded program the padding units give 0,
    so that they reach no later layer, output, gradient or statistic."""
    units = self.real_units(i, hp)
    mask = None if units is None else jnp.arange(pre.shape[-1]) < units
    z = Norm(self.norm, self.norm_eps, self.lp_center,
             tuple(u[i] for u in self.variant_units), name=f"norm_{i}")(
                 pre, train=train, hp=hp, mask=mask)
    taps.append((pre, z))
    out = ACTIVATION_FNS[self.activation](z)
    return out if mask is None else jnp.where(mask, out, 0.0)

  def hidden(self, x, new, i, hp):
    """Layer i's output `new`, or its input x where this model lacks the layer (a
    padded program's shallower network: the identity)."""
    units = self.real_units(i, hp)
    return new if units is None else jnp.where(units > 0, new, x)

  def output(self, x):
    """The output layer: always with a bias (no norm follows it)."""
    return nn.Dense(self.num_outputs, kernel_init=self.kernel_initializer, name="dense_out")(x)

  @property
  def use_bias(self) -> bool:
    return not centres_batch(self.norm, self.lp_center)


class MLP(_NormedLayers):
  """depth x (Dense -> Norm -> activation), then a Dense output layer.

  With activation 'identity' this is the deep linear network of Santurkar et
  al. 2018 (depth hidden layers + output = depth + 1 linear layers). Image
  inputs are flattened.
  """

  @property
  def layer_names(self) -> tuple[str, ...]:
    return tuple(f"dense_{i}" for i in range(self.depth))

  @property
  def layer_units(self) -> tuple[int, ...]:
    return (self.width,) * self.depth

  @nn.compact
  def __call__(self, x, *, train: bool, hp):
    x = x.reshape(x.shape[0], -1)
    taps = []
    for i in range(self.depth):
      pre = self.dense(self.width, f"dense_{i}")(x)
      new = self.normed(pre, i, train, hp, taps)
      x = new if i == 0 else self.hidden(x, new, i, hp)  # every network has a first layer
    return self.output(x), tuple(taps)


class VGG(_NormedLayers):
  """VGG-style CNN: stages of 3x3 convolutions (channels[s] each, convs_per_stage
  per stage) each followed by 2x2 max pooling; then depth x Dense(width) hidden
  layers and a Dense output layer. Every conv and hidden dense layer is
  Conv/Dense -> Norm -> activation; batch norms take per-channel statistics over
  batch x height x width."""
  channels: tuple[int, ...] = (16, 32)
  convs_per_stage: int = 1

  @property
  def layer_names(self) -> tuple[str, ...]:
    convs = len(self.channels) * self.convs_per_stage
    return (tuple(f"conv_{i}" for i in range(convs))
            + tuple(f"dense_{i}" for i in range(self.depth)))

  @property
  def layer_units(self) -> tuple[int, ...]:
    return (tuple(c for c in self.channels for _ in range(self.convs_per_stage))
            + (self.width,) * self.depth)

  @nn.compact
  def __call__(self, x, *, train: bool, hp):
    taps, i = [], 0
    for channels in self.channels:
      for _ in range(self.convs_per_stage):
        pre = nn.Conv(channels, (3, 3), padding="SAME", use_bias=self.use_bias,
                      kernel_init=self.kernel_initializer, name=f"conv_{i}")(x)
        x = self.normed(pre, i, train, hp, taps)
        i += 1
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1)
    for d in range(self.depth):
      pre = self.dense(self.width, f"dense_{d}")(x)
      new = self.normed(pre, i, train, hp, taps)
      x = new if d == 0 else self.hidden(x, new, i, hp)
      i += 1
    return self.output(x), tuple(taps)


def build(static: dict, num_outputs: int, variant_units=()) -> nn.Module:
  """The model of a group's static config (of a padded program's, with its
  `variant_units`: icsjax.programs)."""
  common = dict(width=static["width"], depth=static["depth"], num_outputs=num_outputs,
                norm=static["norm"], norm_eps=static["norm_eps"], lp_center=static["lp_center"],
                kernel_init=static["init"], variant_units=tuple(variant_units))
  if static["arch"] == "vgg":
    return VGG(channels=tuple(static["channels"]), convs_per_stage=static["convs_per_stage"],
               activation=static["activation"], **common)
  activation = "identity" if static["arch"] == "dln" else static["activation"]
  return MLP(activation=activation, **common)


def variant_units(program_static: dict, variants, num_outputs: int) -> tuple:
  """Per variant (a logical group's static config), per normalised layer of the
  padded program `program_static`: the variant's real units there (0: it lacks
  the layer). Layers correspond by name."""
  names = build(program_static, num_outputs).layer_names
  out = []
  for static in variants:
    own = build(static, num_outputs)
    units = dict(zip(own.layer_names, own.layer_units))
    out.append(tuple(units.get(name, 0) for name in names))
  return tuple(out)


def scale_kernels(params, gain):
  """`params` with every Dense and Conv kernel times `gain` (the dynamic
  init_gain); biases and norm parameters unchanged. A gain of 1 changes no bit
  (x * 1 == x in IEEE arithmetic)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p * gain if getattr(path[-1], "key", None) == "kernel" else p, params)


def param_shapes(static: dict, input_shape: tuple[int, ...], num_outputs: int):
  """One model's parameter tree as shapes (nothing is computed). An eval-mode
  init reads no hyperparameter, hence the empty hp."""
  return jax.eval_shape(lambda: build(static, num_outputs).init(
      {"params": jax.random.PRNGKey(0)}, jnp.zeros((1,) + tuple(input_shape)), train=False,
      hp={})["params"])


def num_params(static: dict, input_shape: tuple[int, ...], num_outputs: int) -> int:
  """Trainable parameters of one model, from shapes alone."""
  shapes = param_shapes(static, input_shape, num_outputs)
  return sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(shapes))
