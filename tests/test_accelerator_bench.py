"""benchmarks/accelerator.py on CPU with small K: the table's rows and columns,
and its analytic FLOP count of one training step against XLA's own count."""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import accelerator  # noqa: E402

# XLA counts 2 FLOPs per multiply-add of the matmuls, as the analytic count does,
# and also every elementwise op (sigmoid, bias adds, softmax, the SGD update):
# on Ioffe's MLP about 1.3% more (measured: 26.73 M against 26.38 M).
FLOP_TOLERANCE = 0.02


def xla_step_flops(layers, batch):
  """XLA's cost analysis of one SGD step of a plain jnp sigmoid MLP, one model."""
  keys = jax.random.split(jax.random.key(0), len(layers) - 1)
  params = [(jax.random.normal(k, (a, b)) * a ** -0.5, jnp.zeros(b))
            for k, a, b in zip(keys, layers[:-1], layers[1:])]

  def loss(params, x, y):
    h = x
    for w, b in params[:-1]:
      h = jax.nn.sigmoid(h @ w + b)
    w, b = params[-1]
    logits = h @ w + b
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(y, 10), -1))

  def step(params, x, y):
    g = jax.grad(loss)(params, x, y)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, g)

  x, y = jnp.zeros((batch, layers[0])), jnp.zeros(batch, jnp.int32)
  cost = jax.jit(step).lower(params, x, y).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"]


def test_mlp_step_flops_match_xla_cost_analysis():
  analytic = accelerator.step_flops(accelerator.mlp_macs())
  assert analytic == 2 * 60 * (3 * 99_400 - 784 * 100)
  xla = xla_step_flops(accelerator.MLP_LAYERS, accelerator.BATCH)
  assert abs(analytic - xla) / xla < FLOP_TOLERANCE, (analytic, xla)


def test_vgg_macs_by_hand():
  # conv 1->8 on 8x8, pool to 4x4, conv 8->16, pool to 2x2, dense 64->32, 32->10
  assert accelerator.vgg_macs() == (8 * 8 * 9 * 8 + 4 * 4 * 9 * 8 * 16 + 64 * 32 + 32 * 10,
                                    8 * 8 * 9 * 8)


def test_cpu_small_table(capsys, monkeypatch):
  from icsjax import tfds_data
  # The script stands random MNIST in for TFDS (study_path.use_random_mnist) by
  # replacing tfds_data.load_arrays: restored after this test, for the tests of
  # tfds_data that this worker runs next.
  monkeypatch.setattr(tfds_data, "load_arrays", tfds_data.load_arrays)
  # The torch rows where torch is installed (the bench extra); the JAX rows anywhere.
  torch = importlib.util.find_spec("torch") is not None
  rows, notes, matmul = accelerator.main(
      ["--cpu_small", "--no-torch_compile", "--torch" if torch else "--no-torch"])
  got = [(r["model"], r["method"], r["k"]) for r in rows]
  want = [("mlp", "JAX sequential", "1x2"), ("mlp", "icsjax", 1), ("mlp", "icsjax", 2),
          ("mlp", "torch.func eager", 1), ("mlp", "torch.func eager", 2),
          ("vgg", "JAX sequential", "1x2"), ("vgg", "icsjax", 1),
          ("vgg", "torch.func eager", 1)]
  assert got == [w for w in want if torch or not w[1].startswith("torch")]
  assert all(r["rate"] > 0 and r["compile_s"] >= 0 for r in rows)
  assert matmul > 0
  assert "mlp: largest K that fit: 2 (no out-of-memory reached: a lower bound)" in notes
  assert "vgg: largest K that fit: 1 (no out-of-memory reached: a lower bound)" in notes
  out = capsys.readouterr().out
  table = [line for line in out.splitlines() if line.startswith("| model ")]
  assert table and [c.strip() for c in table[-1].strip("|").split("|")] == list(
      accelerator.COLUMNS)
  # TFLOP/s column = model-steps/s x analytic FLOPs per step
  last = out.splitlines()[out.splitlines().index(table[-1]) + 2]
  cells = [c.strip() for c in last.strip("|").split("|")]
  assert cells[:3] == ["mlp", "icsjax", "1"]
  rate = float(cells[3].replace(",", ""))
  assert float(cells[4]) == pytest.approx(rate * 2 * 60 * (3 * 99_400 - 78_400) / 1e12, abs=1e-4)
  assert "precision" in out and "jax " in out


def test_out_of_memory_is_recognised():
  assert accelerator.is_oom(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying "
                                         "to allocate 1.00GiB"))
  assert accelerator.is_oom(type("OutOfMemoryError", (RuntimeError,), {})("CUDA"))
  assert not accelerator.is_oom(ValueError("shapes (3,) and (4,) do not match"))
