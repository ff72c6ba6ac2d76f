"""How the initial signal of a deep sigmoid MLP without norms depends on
`init` and `init_gain` (docs/measurements.md, "Initialisation").

  python benchmarks/init_signal.py [--depth=8] [--width=100] [--gains=1,2,3,4,5,6] [--seeds=5]

At initialisation, on the whole digits training set (standardised as in
training), per hidden layer l of an arch="mlp", activation="sigmoid",
norm="none" model whose weights come from icsjax.train.init_model:

  forward   Var_n(a_l): the variance across examples of each unit's
            pre-activation a_l, averaged over the layer's units;
  backward  E_n[(dl_n/da_l)^2]: the mean square of each example's loss
            gradient with respect to a_l (softmax cross-entropy of that one
            example), averaged over examples and units.

Each is averaged over --seeds seed indices. The backward pass differentiates
a forward pass written here from the kernels and biases (a_l = h W + b),
checked against the model's own pre-activations.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from icsjax import data as data_lib  # noqa: E402
from icsjax import study as study_lib  # noqa: E402
from icsjax import train  # noqa: E402
from icsjax.forward import model_fns  # noqa: E402
from icsjax.spec import GroupSpec  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--depth", type=int, default=8)
parser.add_argument("--width", type=int, default=100)
parser.add_argument("--gains", default="1,2,3,4,5,6")
parser.add_argument("--inits", default="lecun_normal,glorot_uniform,he_normal,orthogonal")
parser.add_argument("--seeds", type=int, default=5)


def model_spec(depth: int, width: int, init: str):
  c = default.get_config()
  c.arch, c.activation, c.norm, c.depth, c.width, c.init = (
      "mlp", "sigmoid", "none", depth, width, init)
  static = {k: c[k] for k in study_lib.STATIC_FIELDS}
  data = data_lib.load(static)
  spec = GroupSpec(static=static, run=study_lib.run_spec(c), task=data.task,
                   num_outputs=data.num_outputs, input_shape=data.input_shape,
                   num_train=data.num_train, num_test=data.num_test)
  hp = {k: jnp.float32(c[k]) for k in study_lib.DYNAMIC_FIELDS}
  return spec, data, hp


def signal(spec, data, hp, seed: int):
  """(forward variance, backward mean square), each per hidden layer."""
  params = train.init_model(spec, seed, hp).params
  x = data.train_x.reshape(data.num_train, -1)
  names = [f"dense_{i}" for i in range(spec.static["depth"])]

  def logits(shifts):
    h, pre = x, []
    for name, shift in zip(names, shifts):
      a = h @ params[name]["kernel"] + params[name]["bias"] + shift
      pre.append(a)
      h = jax.nn.sigmoid(a)
    return h @ params["dense_out"]["kernel"] + params["dense_out"]["bias"], pre

  def summed_loss(shifts):  # the sum of per-example losses: its gradient is per example
    out, pre = logits(shifts)
    return -jnp.sum(jax.nn.log_softmax(out)[jnp.arange(len(x)), data.train_y]), pre

  shifts = [jnp.zeros((len(x), spec.static["width"]))] * len(names)
  grads, pre = jax.grad(summed_loss, has_aux=True)(shifts)
  _, taps, _ = model_fns(spec, hp).apply(params, {}, data.train_x, train=False)
  for (tap, _), a in zip(taps, pre):
    np.testing.assert_allclose(tap, a, rtol=1e-5, atol=1e-5)
  fwd = [float(jnp.var(a, axis=0).mean()) for a in pre]
  bwd = [float(jnp.mean(g ** 2)) for g in grads]
  return np.array(fwd), np.array(bwd)


def table(title, rows, depth):
  print(f"\n{title}")
  print("| " + " | ".join(["setting"] + [f"layer {i + 1}" for i in range(depth)]) + " |")
  print("|" + "---|" * (depth + 1))
  for label, values in rows:
    print(f"| {label} | " + " | ".join(f"{v:.3g}" for v in values) + " |")


def main():
  args = parser.parse_args()
  settings = [("lecun_normal", float(g)) for g in args.gains.split(",")]
  settings += [(i, 1.0) for i in args.inits.split(",") if i != "lecun_normal"]
  fwd, bwd = [], []
  for init, gain in settings:
    spec, data, hp = model_spec(args.depth, args.width, init)
    hp["init_gain"] = jnp.float32(gain)
    per_seed = [signal(spec, data, hp, s) for s in range(args.seeds)]
    label = f"{init}, gain {gain:g}"
    fwd.append((label, np.mean([f for f, _ in per_seed], axis=0)))
    bwd.append((label, np.mean([b for _, b in per_seed], axis=0)))
  print(f"jax {jax.__version__}; digits, {data.num_train} training examples; sigmoid MLP "
        f"{args.depth} x {args.width}, no norm; mean over {args.seeds} seed indices")
  table("forward: Var_n(a_l), mean over units", fwd, args.depth)
  table("backward: E[(dl_n/da_l)^2], mean over examples and units", bwd, args.depth)


if __name__ == "__main__":
  main()
