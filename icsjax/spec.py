"""What a compiled group is: its static config, the run's loop-shaping values
and its data's shapes, with the facts derived from them (the model, its
layers, its parameter count). Nothing here computes on arrays."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from icsjax import models
from icsjax.norms import NOISY_NORMS, RUNNING_STAT_NAMES


class RunSpec(Mapping):
  """The run-role config values (cadences, probe sizes, seeds, ...), read as
  attributes (``run.ics_every``) or by name (``run["ics_every"]``). Immutable."""

  def __init__(self, values: Mapping[str, Any]):
    freeze = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
    object.__setattr__(self, "_values", {k: freeze(v) for k, v in values.items()})

  def __getattr__(self, name):
    try:
      return self._values[name]
    except KeyError:
      raise AttributeError(f"RunSpec has no field {name!r}") from None

  def __setattr__(self, name, value):
    raise dataclasses.FrozenInstanceError(f"RunSpec is immutable ({name})")

  def __getitem__(self, name):
    return self._values[name]

  def __iter__(self):
    return iter(self._values)

  def __len__(self):
    return len(self._values)

  def __repr__(self):
    return f"RunSpec({self._values!r})"


@dataclasses.dataclass(frozen=True)
class GroupSpec:
  """One compiled group: fixed static config, data shapes, run values and placement."""
  static: dict
  run: RunSpec
  task: str
  num_outputs: int
  input_shape: tuple[int, ...]
  num_train: int
  num_test: int
  devices: int = 1      # devices the model axis is sharded over, in contiguous blocks
  first_device: int = 0  # the first of them (icsjax.placement.device_blocks)
  model_chunk: int = 0  # models a device trains at a time (0: all of its share)
  # Probes in sequence (a CPU, where work arrays then stay in cache): a per-device
  # kind one model per device at a time, and each probe's evaluations one after
  # another (probes.evaluations). Else all at once (accelerators).
  probes_in_sequence: bool = False
  # A padded program (icsjax.programs): the static config of each logical group it
  # trains, in variant order; `static` is then the program's padded config.
  variants: tuple = ()

  @functools.cached_property
  def variant_units(self) -> tuple[tuple[int, ...], ...]:
    """Per variant, per normalised layer: its real units (0: absent); () unpadded."""
    if not self.variants:
      return ()
    return models.variant_units(self.static, self.variants, self.num_outputs)

  @functools.cached_property
  def variant_param_shapes(self) -> tuple:
    """Per variant: its own network's parameter tree, as shapes."""
    return tuple(models.param_shapes(s, self.input_shape, self.num_outputs)
                 for s in self.variants)

  @property
  def flatten_blocks(self) -> dict[str, int]:
    """{layer: positions} of a kernel that reads a flattened feature map (a VGG's
    first dense layer), whose rows come one block of channels per position."""
    if self.static["arch"] != "vgg":
      return {}
    stages = len(self.static["channels"])
    h, w = self.input_shape[:2]
    return {"dense_0": math.ceil(h / 2 ** stages) * math.ceil(w / 2 ** stages)}

  @property
  def model(self) -> nn.Module:
    return models.build(self.static, self.num_outputs, self.variant_units)

  @property
  def activation(self) -> str:
    """The nonlinearity of every normalised layer (a deep linear network's: identity)."""
    return self.model.activation

  @property
  def layer_names(self) -> tuple[str, ...]:
    """The normalised layers, in forward order."""
    return self.model.layer_names

  @property
  def layer_units(self) -> tuple[int, ...]:
    return self.model.layer_units

  @property
  def max_units(self) -> int:
    return max(self.layer_units)

  @property
  def num_layers(self) -> int:
    return len(self.layer_units)

  @property
  def weight_layers(self) -> tuple[str, ...]:
    """Every layer with a kernel, in forward order: the normalised ones, then the output."""
    return self.layer_names + ("dense_out",)

  @property
  def scale_invariant(self) -> tuple[bool, ...]:
    """Per weight layer: whether the network's function is unchanged when its
    kernel is scaled (docs/measurements.md, "Curvature"): a bias-free kernel
    followed by a centring batch norm. The output layer feeds the loss directly."""
    invariant = models.centres_batch(self.static["norm"], self.static["lp_center"])
    return (invariant,) * len(self.layer_names) + (False,)

  @functools.cached_property
  def num_params(self) -> int:
    return models.num_params(self.static, self.input_shape, self.num_outputs)

  @property
  def running_stat_names(self) -> tuple[str, ...]:
    return RUNNING_STAT_NAMES.get(self.static["norm"], ())

  @property
  def noisy(self) -> bool:
    """Whether the norm draws noise in train mode."""
    return self.static["norm"] in NOISY_NORMS

  @property
  def batch_size(self) -> int:
    return self.static["batch_size"]

  @property
  def num_test_batches(self) -> int:
    """Test batches of the training batch size (train-mode evaluation)."""
    return self.num_test // self.batch_size

  def norm_set_sizes(self, batch: int) -> tuple[int, ...]:
    """Elements in each normalised layer's per-unit normalisation set at `batch`
    (batch x positions), from shapes alone."""
    init = lambda: self.model.init_with_output(
        {"params": jax.random.PRNGKey(0)}, jnp.zeros((batch,) + tuple(self.input_shape)),
        train=False, hp={})
    (_, taps), _ = jax.eval_shape(init)
    return tuple(math.prod(pre.shape[:-1]) for pre, _ in taps)
