"""Where the curvature probe's time goes: the probe with parts of it swapped
out, for timing only (every swapped Lanczos computes wrong curvature).

  python benchmarks/curvature_parts.py [--models=32] [--norm=none] [--parts=...]

Same workload and ratio as benchmarks/probe_cost.py (K Ioffe MLPs, batch 60,
10 Lanczos steps x 2 SLQ vectors + 5 Hutchinson samples, a probe event every
20 steps; ratio = extra seconds per event per gradient evaluation over the
seconds of a plain training step). Parts:

  full       the probe as it is (icsjax.probes.curvature.lanczos)
  hvp_trace  full, with each Hutchinson sample's z^T H z as z . (H z), a
             Hessian-vector product, instead of forward over forward
  no_branch  no breakdown test or restart (a select in the probe; a branch before)
  per_leaf   no_branch, with the basis as one matrix per parameter leaf instead
             of one steps x parameters matrix (the layout before)
  no_reorth  no_branch and no reorthogonalisation: the three-term recurrence only
  products   of Lanczos, the Hessian-vector products and their dot products only
Every part runs the probe's Hutchinson samples (forward over forward, but in
hvp_trace) and its per-layer norms.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icsjax import devices  # noqa: E402  (the CPU split must come before any computation)

PARTS = ("full", "hvp_trace", "no_branch", "per_leaf", "no_reorth", "products")
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--models", type=int, default=32)
parser.add_argument("--norm", default="none")
parser.add_argument("--parts", default=",".join(PARTS))
parser.add_argument("--repeats", type=int, default=5)
ARGS = parser.parse_args()
SPLIT = devices.split_cpu_host(devices.auto_cpu_devices())

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from optax import tree_utils  # noqa: E402

from icsjax.probes import curvature  # noqa: E402
from study_path import GRADIENTS, JaxGroup, probe_config, timed, use_random_mnist  # noqa: E402

FULL = curvature.lanczos, curvature.tree_quadratic_form
HIGHEST = jax.lax.Precision.HIGHEST  # as in lanczos: float32 products on a GPU too
STEPS, EVENTS, SCAN_LENGTH = 200, 10, 20


def three_term(hvp, v0, steps, reorthogonalise=True, flat=True):
  """Lanczos without the breakdown test and restart; `flat`: one basis matrix, else one
  per leaf."""
  unravel = ravel_pytree(v0)[1]
  leaves, treedef = jax.tree_util.tree_flatten(v0)
  if flat:
    to_rows, to_tree = (lambda tree: [ravel_pytree(tree)[0]]), (lambda rows: unravel(rows[0]))
  else:
    to_rows = lambda tree: [leaf.reshape(-1) for leaf in jax.tree_util.tree_leaves(tree)]
    to_tree = lambda rows: jax.tree_util.tree_unflatten(
        treedef, [r.reshape(leaf.shape) for r, leaf in zip(rows, leaves)])
  norm = jnp.sqrt(tree_utils.tree_vdot(v0, v0))
  basis = [jnp.zeros((steps, r.size)).at[0].set(r / norm) for r in to_rows(v0)]

  def step(j, carry):
    basis, alphas, betas = carry
    v, v_prev = [b[j] for b in basis], [b[jnp.maximum(j - 1, 0)] for b in basis]
    w = to_rows(hvp(to_tree(v)))
    alpha = tree_utils.tree_vdot(v, w)
    beta_prev = jnp.where(j > 0, betas[jnp.maximum(j - 1, 0)], 0.0)
    w = [x - alpha * y - beta_prev * z for x, y, z in zip(w, v, v_prev)]
    if reorthogonalise:
      coef = sum(jnp.dot(b, x, precision=HIGHEST) for b, x in zip(basis, w))
      w = [x - jnp.dot(coef, b, precision=HIGHEST) for x, b in zip(w, basis)]
    beta = jnp.sqrt(tree_utils.tree_vdot(w, w))
    row = jnp.minimum(j + 1, steps - 1)  # as in lanczos: the last step writes no row
    return ([b.at[row].set(jnp.where(j + 1 < steps, x / beta, b[row])) for b, x in zip(basis, w)],
            alphas.at[j].set(alpha), betas.at[j].set(beta))

  zeros = jnp.zeros((steps,))
  _, alphas, betas = jax.lax.fori_loop(0, steps, step, (basis, zeros, zeros))
  return alphas, betas, None


def products(hvp, v0, steps):
  def step(j, carry):
    v, alphas = carry
    w = hvp(v)
    alpha = tree_utils.tree_vdot(v, w)
    return jax.tree_util.tree_map(lambda x: x / alpha, w), alphas.at[j].set(alpha)
  _, alphas = jax.lax.fori_loop(0, steps, step, (v0, jnp.zeros((steps,))))
  return alphas, alphas, None


def hvp_quadratic_form(loss_fn, params):
  hvp = curvature.tree_hvp(loss_fn, params)
  return lambda z: tree_utils.tree_vdot(z, hvp(z))


# part: (lanczos, tree_quadratic_form) for the probe to use
VERSIONS = {"full": FULL, "hvp_trace": (FULL[0], hvp_quadratic_form),
            "no_branch": (three_term, FULL[1]),
            "per_leaf": (lambda *a, **k: three_term(*a, flat=False, **k), FULL[1]),
            "no_reorth": (lambda *a, **k: three_term(*a, reorthogonalise=False, **k), FULL[1]),
            "products": (products, FULL[1])}


def main():
  use_random_mnist()
  print(f"jax {jax.__version__}: {jax.device_count()} {jax.devices()[0].platform} device(s) "
        f"({SPLIT}); {ARGS.models} models, norm {ARGS.norm}, medians of {ARGS.repeats}")
  config = lambda probe: probe_config(ARGS.models, ARGS.norm, STEPS, SCAN_LENGTH, probe)
  calls = {"off": JaxGroup(config(""))}
  for part in ARGS.parts.split(","):
    # read when the segment is traced, in the first call
    curvature.lanczos, curvature.tree_quadratic_form = VERSIONS[part]
    calls[part] = JaxGroup(config("curvature"))
    calls[part]()
  curvature.lanczos, curvature.tree_quadratic_form = FULL
  t = timed(calls, ARGS.repeats)
  per_step = t["off"] / STEPS
  print(f"{'part':10s} {'segment s':>9s} {'ratio':>6s}")
  for part, seconds in t.items():
    ratio = (seconds - t["off"]) / EVENTS / GRADIENTS["curvature"] / per_step
    print(f"{part:10s} {seconds:9.3f} {'' if part == 'off' else f'{ratio:6.2f}'}")


if __name__ == "__main__":
  main()
