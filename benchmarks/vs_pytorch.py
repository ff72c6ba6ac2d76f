"""The study loop against PyTorch and the machine's matmul ceiling, side by side.

  pip install -r benchmarks/requirements.txt
  python benchmarks/vs_pytorch.py [--ks=1,8,32,128] [--steps=200] [--repeats=3]

Workload (issue 4): Ioffe's MLP 784-100-100-100-10 with sigmoids, batch 60,
SGD, on 60,000 in-memory 784-dimensional inputs (random MNIST-shaped images,
standardised as icsjax does; every method reads the same arrays). K models
= 8 learning rates x K/8 seeds (K=1: one model); models of one seed share
their minibatch order. Without and with batch norm. Methods:

  icsjax study     the default study's code path: the CPU split into devices
                   as main.py does it, runner.build_group_runs/run_segment, one
                   record and one evaluation (600 test examples) per segment;
  JAX sequential   the same code path for one model, run K times in sequence;
  torch sequential nn.Sequential + torch.optim.SGD, the K models in turn;
  torch.func       functional_call-style params stacked over models,
                   vmap(grad(loss)), manual SGD, batch norm's running
                   statistics updated as in icsjax: one functional step
                   (state in, state out) with the per-seed minibatch gather;
  torch.func compiled  that same step under torch.compile (torch_compiled.py:
                   default mode, static shapes, on-disk caches off), the peer
                   a PyTorch user would reach for; its first call, the
                   warm-up, compiles, and "compile s" is that call less the
                   fastest timed one. At start, per norm, 3 steps of 8 models eager
                   and compiled from the same state must agree within 1e-5
                   (relative to each array's largest entry);
  ceiling          a jitted float32 2048x2048 matmul in JAX, timed between the
                   methods in every repeat (PyTorch's rate printed once).

Columns /func, /comp and /tseq: icsjax's rate over torch.func eager, torch.func
compiled and torch sequential. Sequential methods time --sequential_models of
the K models (their rate does not depend on K). Figures are medians of
--repeats interleaved repeats after one warm-up call per method. FLOPs = 6 x
multiply-adds x batch (batch norm's elementwise work is not counted).
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icsjax import devices  # noqa: E402  (the CPU split must come before any computation)

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--ks", default="1,8,32,128", help="comma-separated model counts")
parser.add_argument("--norms", default="none,batchnorm")
parser.add_argument("--steps", type=int, default=200, help="steps per timed call")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--sequential_models", type=int, default=16,
                    help="models the sequential methods time (0: all K)")
parser.add_argument("--cpu_devices", type=int, default=0,
                    help="as config.cpu_devices (0: automatic, as the default study)")
if __name__ == "__main__":  # imported (tests/test_vs_pytorch.py): no arguments, no split
  ARGS = parser.parse_args()
  SPLIT = devices.split_cpu_host(ARGS.cpu_devices or devices.auto_cpu_devices())

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import torch_compiled  # noqa: E402
from study_path import (CLASSES, NUM_TRAIN, JaxGroup, learning_rates, study_config,  # noqa: E402
                        use_random_mnist)

BATCH, WIDTH, DEPTH, INPUTS = 60, 100, 3, 784
MACS = INPUTS * WIDTH + (DEPTH - 1) * WIDTH * WIDTH + WIDTH * CLASSES
FLOP_PER_MODEL_STEP = 6 * MACS * BATCH
BN_MOMENTUM, BN_EPS = 0.99, 1e-5


def jax_sequential(single: JaxGroup, models: int):
  def call():
    for _ in range(models):
      single()
  return call


def torch_mlp(norm):
  bn = norm == "batchnorm"
  layers, d = [], INPUTS
  for _ in range(DEPTH):
    layers.append(nn.Linear(d, WIDTH, bias=not bn))
    if bn:
      layers.append(nn.BatchNorm1d(WIDTH, eps=BN_EPS, momentum=1 - BN_MOMENTUM))
    layers.append(nn.Sigmoid())
    d = WIDTH
  return nn.Sequential(*layers, nn.Linear(d, CLASSES))


def torch_sequential(x, y, indices, lrs, norm, models):
  nets = [torch_mlp(norm) for _ in range(models)]
  seeds = indices.shape[0]

  def call():
    for k, net in enumerate(nets):
      opt = torch.optim.SGD(net.parameters(), lr=lrs[k])
      for idx in indices[k % seeds]:
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
  return call


def torch_func_state(norm, k, seed=0):
  """The K models' initial parameters stacked over models, and their batch-norm
  running statistics (mean, variance) per hidden layer."""
  from torch.func import stack_module_state
  torch.manual_seed(seed)
  params, _ = stack_module_state([torch_mlp(norm) for _ in range(k)])
  params = {n: p.detach() for n, p in params.items()}
  running = tuple((torch.zeros(k, WIDTH), torch.ones(k, WIDTH)) for _ in range(DEPTH))
  return params, running


def torch_func_step(x, y, lrs, norm):
  """One SGD step of the K models as one torch.func ensemble: the minibatch
  gather, vmap(grad) over stacked parameters, the update and batch norm's running
  statistics, all functional (state in, state out), so that torch.compile can
  take the whole step."""
  from torch.func import grad, vmap
  k = len(lrs)
  bn = norm == "batchnorm"
  per = 3 if bn else 2  # modules per hidden layer

  def loss_fn(p, xb, yb):
    stats, h = [], xb
    for i in range(DEPTH):
      h = h @ p[f"{per * i}.weight"].T
      if bn:
        mean = h.mean(0)
        var = ((h - mean) ** 2).mean(0)
        h = ((h - mean) * torch.rsqrt(var + BN_EPS) * p[f"{per * i + 1}.weight"]
             + p[f"{per * i + 1}.bias"])
        stats.append((mean, var))
      else:
        h = h + p[f"{per * i}.bias"]
      h = torch.sigmoid(h)
    out = h @ p[f"{per * DEPTH}.weight"].T + p[f"{per * DEPTH}.bias"]
    return nn.functional.cross_entropy(out, yb), stats

  grads_fn = vmap(grad(loss_fn, has_aux=True))
  lr = torch.tensor(lrs, dtype=torch.float32)
  unbias = BATCH / (BATCH - 1)

  def step(params, running, idx):
    grads, stats = grads_fn(params, x[idx], y[idx])
    params = {n: p - lr.view((k,) + (1,) * (p.ndim - 1)) * grads[n] for n, p in params.items()}
    if bn:
      running = tuple((BN_MOMENTUM * rm + (1 - BN_MOMENTUM) * mean,
                       BN_MOMENTUM * rv + (1 - BN_MOMENTUM) * unbias * var)
                      for (rm, rv), (mean, var) in zip(running, stats))
    return params, running
  return step


def torch_func(x, y, indices, lrs, norm, compiled=False, steps=None):
  """A call that trains the ensemble through `indices` (seeds x steps x batch;
  model k reads seed k % seeds's minibatches), eager or under torch.compile;
  call.state() is (params, running)."""
  k = len(lrs)
  step = torch_func_step(x, y, lrs, norm)
  if compiled:
    step = torch_compiled.compile_step(step)
  params, running = torch_func_state(norm, k)
  seeds = torch.arange(k) % indices.shape[0]

  def call():
    nonlocal params, running
    for t in range(indices.shape[1] if steps is None else steps):
      params, running = step(params, running, indices[seeds, t])
  call.state = lambda: (params, running)
  return call


def check_compiled_matches_eager(x, y, indices, lrs, norm, steps=3, tol=1e-5):
  """The compiled ensemble computes what the eager one does: from the same
  initial state, the same parameters and running statistics after `steps` steps
  (within `tol`, relative to each array's largest entry: the compiled kernels
  fuse and reorder float32 sums)."""
  eager = torch_func(x, y, indices, lrs, norm, steps=steps)
  compiled = torch_func(x, y, indices, lrs, norm, compiled=True, steps=steps)
  eager(), compiled()
  flat = lambda state: list(state[0].values()) + [a for pair in state[1] for a in pair]
  for a, b in zip(flat(eager.state()), flat(compiled.state()), strict=True):
    err = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
    assert err < tol, f"{norm}: torch.func compiled differs from eager by {err:.1e}"


MATMUL_SIZE, MATMUL_REPS = 2048, 5


def jax_matmul():
  """The ceiling: a jitted float32 (2048 x 2048) @ (2048 x 2048), MATMUL_REPS times."""
  a = jax.numpy.ones((MATMUL_SIZE, MATMUL_SIZE), jax.numpy.float32)
  f = jax.jit(lambda a: a @ a)

  def call():
    for _ in range(MATMUL_REPS):
      f(a).block_until_ready()
  return call


def torch_matmul_gflops():
  a = torch.ones(MATMUL_SIZE, MATMUL_SIZE)
  a @ a
  t = time.perf_counter()
  for _ in range(MATMUL_REPS):
    a @ a
  return MATMUL_REPS * 2 * MATMUL_SIZE ** 3 / (time.perf_counter() - t) / 1e9


def per_seed_indices(k, steps, seed):
  """Minibatch indices, seeds x steps x batch: the K models' K/8 seeds' orders."""
  rng = np.random.default_rng(seed)
  return torch.from_numpy(rng.integers(0, NUM_TRAIN, (max(k // 8, 1), steps, BATCH)))


def per_model_lrs(k):
  return [lr for lr in learning_rates(k) for _ in range(max(k // 8, 1))]


def bench_one(k, norm, single, x, y):
  steps = ARGS.steps
  seq_models = min(k, ARGS.sequential_models or k)
  indices = per_seed_indices(k, steps, seed=k)
  lrs = per_model_lrs(k)
  methods = {  # name: (call, models each call trains)
      "icsjax study": (JaxGroup(study_config(k, norm, steps)), k),
      "JAX sequential": (jax_sequential(single, seq_models), seq_models),
      "torch sequential": (torch_sequential(x, y, indices, lrs, norm, seq_models), seq_models),
      "torch.func": (torch_func(x, y, indices, lrs, norm), k),
      "torch.func compiled": (torch_func(x, y, indices, lrs, norm, compiled=True), k),
      "ceiling": (jax_matmul(), None),
  }
  times = {name: [] for name in methods}
  # warm-up: compilation, allocator, caches; the compiled ensemble's first call
  # is its compile time plus one call's work
  first = {name: torch_compiled.first_call_seconds(call) for name, (call, _) in methods.items()}
  for _ in range(ARGS.repeats):
    for name, (call, _) in methods.items():
      t = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - t)
  rates = {name: models * steps / statistics.median(times[name])
           for name, (_, models) in methods.items() if models}
  # less the fastest timed call, not the median: on a shared machine a slow timed
  # call could make the difference negative
  compile_s = first["torch.func compiled"] - min(times["torch.func compiled"])
  ceiling = MATMUL_REPS * 2 * MATMUL_SIZE ** 3 / statistics.median(times["ceiling"]) / 1e9
  study = rates["icsjax study"]
  gflops = study * FLOP_PER_MODEL_STEP / 1e9
  cells = [f"{rates[n]:>10,.0f}" for n in rates]
  print(f"{norm:10s} {k:4d} " + " ".join(cells)
        + f" {gflops:8.1f} {ceiling:8.0f} {100 * gflops / ceiling:6.0f}%"
        + f" {study / rates['torch.func']:6.2f}x {study / rates['torch.func compiled']:6.2f}x"
        + f" {study / rates['torch sequential']:6.2f}x {compile_s:9.1f}",
        flush=True)
  return rates


def main():
  ks = [int(k) for k in ARGS.ks.split(",")]
  norms = ARGS.norms.split(",")
  use_random_mnist()
  cores = len(os.sched_getaffinity(0))
  print(f"jax {jax.__version__}: {len(jax.devices())} {jax.devices()[0].platform} device(s) "
        f"({SPLIT}) on {cores} cores; torch {torch.__version__}: "
        f"{torch.get_num_threads()} threads; torch.compile mode {torch_compiled.MODE!r}")
  print(f"PyTorch float32 {MATMUL_SIZE}^2 matmul: {torch_matmul_gflops():.0f} GFLOP/s "
        f"(reference); {FLOP_PER_MODEL_STEP / 1e6:.1f} MFLOP per model-step; {ARGS.steps} "
        f"steps per call; medians of {ARGS.repeats} interleaved repeats")
  print("model-steps/s; GFLOP/s of icsjax; ceiling = jitted JAX matmul GFLOP/s, timed "
        "between the methods; /func, /comp, /tseq = icsjax over torch.func eager, "
        "torch.func compiled, torch sequential; compile s = torch.compile's first call "
        "less the fastest timed call")
  print(f"{'norm':10s} {'K':>4s} {'icsjax':>10s} {'JAX seq':>10s} {'torch seq':>10s} "
        f"{'torch.func':>10s} {'func comp':>10s} {'GFLOP/s':>8s} {'ceiling':>8s} "
        f"{'%ceil':>7s} {'/func':>7s} {'/comp':>7s} {'/tseq':>7s} {'compile s':>9s}")
  for norm in norms:
    single = JaxGroup(study_config(1, norm, ARGS.steps))
    data = single.run.data
    x = torch.from_numpy(np.array(data.train_x).reshape(NUM_TRAIN, -1))
    y = torch.from_numpy(np.asarray(data.train_y).astype(np.int64))
    check_compiled_matches_eager(x, y, per_seed_indices(8, 3, seed=0), per_model_lrs(8), norm)
    for k in ks:
      bench_one(k, norm, single, x, y)


if __name__ == "__main__":
  main()
