"""How full icsjax fills one accelerator: thousands of models per device.

  python benchmarks/accelerator.py [--ks=1,32,256,1024,4096] [--vgg_ks=1,8,32,128,256]
                                   [--steps=200] [--time_limit_s=270] [--cpu_small]

One table. Rows: Ioffe's MLP (784-100-100-100-10, sigmoid, batch 60, SGD, no
norm, random MNIST-shaped data) and the small VGG of configs/small_vgg_digits.py
(8x8 digits, conv 8 -> pool -> conv 16 -> pool -> dense 32 -> 10, ReLU, batch
60, SGD, no norm), each trained by

  icsjax          the study's own compiled segment (runner.build_group_runs /
                  run_segment via study_path.JaxGroup, as vs_pytorch.py and
                  study_rate.py run it): K models in one program, one record and
                  one evaluation per segment of --steps steps;
  JAX sequential  the same code path for one model (the K=1 program), run in
                  turn; timed on --sequential_models models and extrapolated per
                  model-step (K models take K times as long), so one row per
                  model; its compile time is in its row (the K=1 row reuses it);
  torch.func      stack_module_state + vmap(grad(functional_call)) over the K
                  models, manual SGD, per-model minibatches drawn on the device;
                  eager, and the same step under torch.compile (torch_compiled.py:
                  default mode, on-disk caches off; when torch is importable;
                  skipped with a note otherwise).

Columns: model-steps/s (models x steps / median wall time of --repeats timed
calls after one warm-up call), achieved TFLOP/s, that as a fraction of the
device's matmul rate (a jitted float32 n x n matmul at JAX's default precision,
measured in the same run), peak device memory (JAX: memory_stats()
peak_bytes_in_use, a high-water mark of the process so far, since JAX cannot
reset it; torch: max_memory_allocated since the row began; '-' where the backend
reports none), compile time (first call minus a steady call) and the largest K
that fit. After the listed Ks and the torch rows, K keeps doubling
(--double_until_oom) until the allocation fails (XLA's RESOURCE_EXHAUSTED,
torch's OutOfMemoryError) or time runs out. --time_limit_s (split equally
between the two models) stops adding rows when the next would not fit in what
is left (estimated as twice the last row's time) and says so in a note; one
long row can overrun it, so the default leaves a minute of the 6 minutes for
start-up and the matmul.

FLOPs of one training step of one model, counted analytically from the
multiply-adds (MACs) of the matmuls and convolutions (biases, activations,
pooling, the loss and the SGD update are not counted):

  forward = 2 x MACs x batch; backward = the weights' gradients (2 x MACs x batch)
  + the inputs' gradients of every layer but the first (2 x (MACs - MACs_1) x batch):
  step    = 2 x batch x (3 x MACs - MACs_1)   ("3 x forward" less the first
            layer's input gradient, which nothing needs)
  MLP:  MACs = 784*100 + 2*100*100 + 100*10 = 99,400, MACs_1 = 78,400
        -> 26.38 MFLOP per model-step (batch 60)
  VGG:  MACs = sum over convs of H_out*W_out*9*C_in*C_out + dense in*out
             = 8*8*9*1*8 + 4*4*9*8*16 + 64*32 + 32*10 = 25,408, MACs_1 = 4,608
        -> 8.59 MFLOP per model-step
tests/test_accelerator_bench.py checks the MLP count against XLA's cost
analysis of one SGD step (within 2%: XLA also counts the elementwise work).

Precision: JAX's float32 matmuls use jax_default_matmul_precision (None: the
backend's default). On CPU that is full float32. On NVIDIA GPUs from Ampere on,
XLA's default for float32 dots may use TF32 (10-bit mantissa, relative error
~1e-3); the script prints the config value and a measured check, the relative
error of a float32 matmul against float64 numpy (~1e-6: full float32; ~1e-3:
TF32; ~1e-2: bfloat16). PyTorch's own default is printed too
(torch.get_float32_matmul_precision(); "highest" means no TF32).

On a device machine without the repo's dependencies (the image has Python
3.12, jax and torch but, for one, not ml_collections), carry wheels in the
checkout and install them there without a network:

  here:    pip download ml_collections absl-py flax optax orbax-checkpoint xarray \
             "etils[epath]" tqdm matplotlib -d wheels/ \
             --python-version 3.12 --only-binary=:all: --platform manylinux2014_x86_64
             (pip download also fetches their dependencies, jax among them; install
             only what the image lacks)
  device:  pip install --no-index --find-links wheels/ ml_collections ...   (what the
             first `python -c "import icsjax.runner"` reports missing; keep the
             image's jax and torch)
           PYTHONPATH=. python benchmarks/accelerator.py

The script puts the checkout on sys.path itself, so icsjax and configs are
imported from it, not from any installed copy.
"""

import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the device
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import small_vgg_digits  # noqa: E402
import torch_compiled  # noqa: E402  (imports torch only when a step is compiled)
from study_path import JaxGroup, study_config, use_random_mnist  # noqa: E402

BATCH, LR = 60, 0.1
MLP_LAYERS = (784, 100, 100, 100, 10)
VGG = small_vgg_digits.get_config()
DIGITS_SHAPE = (8, 8, 1)
CLASSES = 10


def mlp_macs(layers=MLP_LAYERS) -> tuple[int, int]:
  """(MACs of one example's forward pass, those of its first layer)."""
  macs = [a * b for a, b in zip(layers[:-1], layers[1:])]
  return sum(macs), macs[0]


def vgg_macs(shape=DIGITS_SHAPE, channels=tuple(VGG.channels), convs=VGG.convs_per_stage,
             width=VGG.width, depth=VGG.depth, classes=CLASSES) -> tuple[int, int]:
  """As mlp_macs: 3x3 SAME convolutions, each stage then a 2x2 max pool (SAME:
  ceil), then the dense layers."""
  (h, w, c), macs = shape, []
  for out in channels:
    for _ in range(convs):
      macs.append(h * w * 9 * c * out)
      c = out
    h, w = -(-h // 2), -(-w // 2)
  dims = (h * w * c,) + (width,) * depth + (classes,)
  macs += [a * b for a, b in zip(dims[:-1], dims[1:])]
  return sum(macs), macs[0]


def step_flops(macs: tuple[int, int], batch: int = BATCH) -> int:
  """One model's training step: forward 2 x MACs x batch, the weights' gradients
  as much again, the inputs' gradients of all layers but the first."""
  total, first = macs
  return 2 * batch * (3 * total - first)


def group_config(model: str, k: int, steps: int):
  """K models of one group (K seeds, one learning rate, no norm), probes off."""
  c = study_config(1, "none", steps, scan_length=math.gcd(steps, 50))
  c.seeds, c.sweep.lr = k, (LR,)
  if model == "vgg":
    c.dataset = VGG.dataset
    c.arch, c.activation, c.width, c.depth = VGG.arch, VGG.activation, VGG.width, VGG.depth
    c.channels, c.convs_per_stage = VGG.channels, VGG.convs_per_stage
  return c


# --- the device's matmul rate and precision ---------------------------------------------


def matmul_rate(n: int, reps: int) -> float:
  """FLOP/s of a jitted float32 n x n matmul at JAX's default precision."""
  a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return reps * 2 * n ** 3 / (time.perf_counter() - t)


def matmul_relative_error(n: int = 512) -> float:
  """Max relative error (to the largest entry) of a float32 JAX matmul against
  float64 numpy on the same inputs: the effective precision of the default."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
  exact = a.astype(np.float64) @ b.astype(np.float64)
  got = np.asarray(jax.jit(lambda a, b: a @ b)(a, b), np.float64)
  return float(np.abs(got - exact).max() / np.abs(exact).max())


def precision_name(err: float) -> str:
  return "full float32" if err < 1e-5 else "TF32-like" if err < 5e-3 else "bfloat16-like"


# --- timing helpers ---------------------------------------------------------------------


def is_oom(e: BaseException) -> bool:
  text = f"{type(e).__name__} {e}"
  return "RESOURCE_EXHAUSTED" in text or "OutOfMemory" in text or "out of memory" in text


def jax_peak_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def time_calls(call, repeats: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of `repeats` further calls)."""
  first = torch_compiled.first_call_seconds(call)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
  return first, statistics.median(times)


def row(model, method, k, models_per_call, steps, first, steady, peak, note=""):
  return dict(model=model, method=method, k=k, rate=models_per_call * steps / steady,
              compile_s=max(first - steady, 0.0), peak_bytes=peak, note=note)


def icsjax_row(model, k, steps, repeats, group=None):
  group = group or JaxGroup(group_config(model, k, steps))
  assert group.run.group.size == k, (group.run.group.size, k)
  first, steady = time_calls(group, repeats)
  return row(model, "icsjax", k, k, steps, first, steady, jax_peak_bytes())


def sequential_row(model, single: JaxGroup, models, steps, repeats):
  """`single` (the K=1 program) run `models` times in turn per call."""
  def call():
    for _ in range(models):
      single()
  first, steady = time_calls(call, repeats)
  return row(model, "JAX sequential", f"1x{models}", models, steps, first, steady,
             jax_peak_bytes(), note="per model, extrapolated to any K")


# --- torch.func ensembles ---------------------------------------------------------------


def torch_module(model):
  from torch import nn
  if model == "mlp":
    layers = []
    for a, b in zip(MLP_LAYERS[:-2], MLP_LAYERS[1:-1]):
      layers += [nn.Linear(a, b), nn.Sigmoid()]
    # inputs come flat: an nn.Flatten here made torch's vmapped step ~10x slower on a CPU
    return nn.Sequential(*layers, nn.Linear(*MLP_LAYERS[-2:]))
  layers, c = [], DIGITS_SHAPE[2]
  for out in VGG.channels:
    for _ in range(VGG.convs_per_stage):
      layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
      c = out
    layers.append(nn.MaxPool2d(2, ceil_mode=True))
  dense = [nn.LazyLinear(VGG.width), nn.ReLU()] + [
      m for _ in range(VGG.depth - 1) for m in (nn.Linear(VGG.width, VGG.width), nn.ReLU())]
  net = nn.Sequential(*layers, nn.Flatten(), *dense, nn.Linear(VGG.width, CLASSES))
  import torch
  net(torch.zeros((1, DIGITS_SHAPE[2]) + DIGITS_SHAPE[:2]))  # materialise the lazy layer
  return net


def torch_ensemble(model, k, steps, device, compiled):
  """A call that trains K models `steps` SGD steps as one torch.func ensemble."""
  import torch
  from torch.func import functional_call, grad, stack_module_state, vmap
  nets = [torch_module(model).to(device) for _ in range(k)]
  params, _ = stack_module_state(nets)
  params = {n: p.detach() for n, p in params.items()}
  base = torch_module(model).to("meta")
  shape = (784,) if model == "mlp" else (DIGITS_SHAPE[2],) + DIGITS_SHAPE[:2]
  num_train = 60_000 if model == "mlp" else 1437
  x = torch.rand((num_train,) + shape, device=device)
  y = torch.randint(0, CLASSES, (num_train,), device=device)

  def loss(p, xb, yb):
    return torch.nn.functional.cross_entropy(functional_call(base, p, (xb,)), yb)

  grads_fn = vmap(grad(loss))

  def step(params, idx):
    g = grads_fn(params, x[idx], y[idx])
    return {n: p - LR * g[n] for n, p in params.items()}

  step_fn = torch_compiled.compile_step(step) if compiled else step

  def call():
    nonlocal params
    for _ in range(steps):
      params = step_fn(params, torch.randint(0, num_train, (k, BATCH), device=device))
    if device != "cpu":
      torch.cuda.synchronize()
  return call


def torch_row(model, k, steps, repeats, device, compiled):
  import torch
  cuda = device != "cpu"
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  call = torch_ensemble(model, k, steps, device, compiled)
  first, steady = time_calls(call, repeats)
  peak = torch.cuda.max_memory_allocated() if cuda else None
  del call
  if cuda:
    torch.cuda.empty_cache()
  name = "torch.func compiled" if compiled else "torch.func eager"
  return row(model, name, k, k, steps, first, steady, peak)


# --- the table --------------------------------------------------------------------------

COLUMNS = ("model", "method", "K", "model-steps/s", "TFLOP/s", "% matmul", "peak GiB",
           "compile s", "note")


def cells(r, matmul_flops):
  flops = r["rate"] * step_flops(mlp_macs() if r["model"] == "mlp" else vgg_macs())
  peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2 ** 30:.3f}"
  return (r["model"], r["method"], str(r["k"]), f"{r['rate']:,.0f}", f"{flops / 1e12:.4f}",
          f"{100 * flops / matmul_flops:.2f}", peak, f"{r['compile_s']:.1f}", r["note"])


def format_table(rows, matmul_flops) -> str:
  body = [COLUMNS] + [cells(r, matmul_flops) for r in rows]
  widths = [max(len(line[i]) for line in body) for i in range(len(COLUMNS))]
  return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"
                   for line in body)


def parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ks", default="1,32,256,1024,4096", help="MLP model counts")
  p.add_argument("--vgg_ks", default="1,8,32,128,256", help="VGG model counts")
  p.add_argument("--steps", type=int, default=200, help="steps per timed call")
  p.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up")
  p.add_argument("--sequential_models", type=int, default=4,
                 help="models the sequential row times (0: no sequential rows)")
  p.add_argument("--torch_max_k", type=int, default=1024,
                 help="largest K the torch.func peers run (eager vmap is slow)")
  p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                 help="the torch.func peers (when torch is importable)")
  p.add_argument("--torch_compile", action=argparse.BooleanOptionalAction, default=True,
                 help="also the torch.compile'd ensemble")
  p.add_argument("--time_limit_s", type=float, default=270.0,
                 help="seconds for all rows, split equally between the two models")
  p.add_argument("--double_until_oom", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--matmul_size", type=int, default=8192)
  p.add_argument("--cpu_small", action="store_true",
                 help="CPU sizes: K = 1, 2 (MLP), 1 (VGG), 5 steps, one repeat, a "
                      "256 matmul, no doubling")
  a = p.parse_args(argv)
  if a.cpu_small:
    a.ks, a.vgg_ks, a.steps, a.repeats = "1,2", "1", 5, 1
    a.sequential_models, a.matmul_size, a.double_until_oom = 2, 256, False
  a.ks = [int(k) for k in a.ks.split(",")]
  a.vgg_ks = [int(k) for k in a.vgg_ks.split(",")]
  return a


def torch_device(wanted: bool):
  if not wanted:
    return None, "torch.func rows not asked for (--no-torch)"
  try:
    import torch
  except ImportError:
    return None, "torch is not importable: torch.func rows skipped"
  device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
  return device, (f"torch {torch.__version__} on {device}, float32 matmul precision "
                  f"{torch.get_float32_matmul_precision()!r}")


def header(args, matmul_flops, err, torch_note) -> str:
  dev = jax.devices()[0]
  return "\n".join([
      f"backend {jax.default_backend()}, device {dev.device_kind} ({len(jax.devices())} "
      f"device(s)), jax {jax.__version__}; {torch_note}",
      f"jax_default_matmul_precision = {jax.config.jax_default_matmul_precision!r}; measured: "
      f"float32 matmul vs float64 numpy, max relative error {err:.1e} ({precision_name(err)})",
      f"matmul rate: jitted float32 {args.matmul_size}^2 matmul, {matmul_flops / 1e12:.3f} "
      f"TFLOP/s; FLOP per model-step: MLP {step_flops(mlp_macs()) / 1e6:.2f} M, VGG "
      f"{step_flops(vgg_macs()) / 1e6:.2f} M (2 x batch {BATCH} x (3 x MACs - first "
      f"layer's MACs))",
      f"{args.steps} steps per call, medians of {args.repeats} calls after one warm-up; "
      f"time limit {args.time_limit_s:.0f} s"])


def main(argv=None):
  """Prints the table; returns (rows, notes, matmul FLOP/s)."""
  args = parse(sys.argv[1:] if argv is None else argv)
  start = time.perf_counter()
  use_random_mnist()
  matmul_flops = matmul_rate(args.matmul_size, 10 if args.matmul_size > 1024 else 3)
  err = matmul_relative_error()
  device, torch_note = torch_device(args.torch)
  print(header(args, matmul_flops, err, torch_note), flush=True)
  rows, notes = [], []
  if device is None:
    notes.append(torch_note)
  last_row_s = 0.0

  deadline = start + args.time_limit_s

  def budget_allows(what):
    left = deadline - time.perf_counter()
    if 2 * last_row_s > left:
      notes.append(f"time limit: {what} not run ({left:.0f} s left of this model's share, "
                   f"the last row took {last_row_s:.0f} s)")
      return False
    return True

  def add(make, what):
    """Runs one row; False when it ran out of memory."""
    nonlocal last_row_s
    t = time.perf_counter()
    try:
      r = make()
    except Exception as e:  # noqa: BLE001  (only out-of-memory is expected)
      if not is_oom(e):
        raise
      notes.append(f"{what}: out of memory ({type(e).__name__})")
      return False
    last_row_s = time.perf_counter() - t
    rows.append(r)
    print(format_table([r], matmul_flops).splitlines()[-1], flush=True)
    return True

  # each model gets an equal share of the time left; doubling to out-of-memory comes
  # last, as the most expendable rows
  share = (deadline - time.perf_counter()) / 2
  for model, ks in (("mlp", args.ks), ("vgg", args.vgg_ks)):
    deadline, last_row_s = time.perf_counter() + share, 0.0
    single = JaxGroup(group_config(model, 1, args.steps))  # K=1 and the sequential peer
    if args.sequential_models and budget_allows(f"{model} JAX sequential"):
      add(lambda: sequential_row(model, single, args.sequential_models, args.steps,
                                 args.repeats), f"{model} JAX sequential")

    def icsjax_fits(k):
      return budget_allows(f"{model} icsjax K={k}") and add(
          lambda: icsjax_row(model, k, args.steps, args.repeats, single if k == 1 else None),
          f"{model} icsjax K={k}")

    fits = 0
    for k in ks:
      if not icsjax_fits(k):
        break
      fits = k
    if device is not None:
      for compiled in (False, True)[:1 + args.torch_compile]:
        for k in (k for k in ks if k <= args.torch_max_k):
          what = f"{model} torch.func {'compiled' if compiled else 'eager'} K={k}"
          if not budget_allows(what) or not add(
              lambda: torch_row(model, k, args.steps, args.repeats, device, compiled), what):
            break
    doubling = args.double_until_oom and fits == max(ks)
    while doubling and icsjax_fits(2 * fits):
      fits *= 2
    oom = any(n.startswith(f"{model} icsjax") and "out of memory" in n for n in notes)
    notes.append(f"{model}: largest K that fit: {fits}" + (
        "" if oom else " (no out-of-memory reached: a lower bound)"))
  print("\n" + format_table(rows, matmul_flops))
  for note in notes:
    print("note: " + note)
  print(f"wall time {time.perf_counter() - start:.0f} s")
  return rows, notes, matmul_flops


if __name__ == "__main__":
  main()
