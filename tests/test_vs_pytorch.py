"""benchmarks/vs_pytorch.py's torch.func ensemble, the peer icsjax is timed
against: its one functional step trains what the K models trained one at a time
with nn.Sequential and torch.optim.SGD train (per-seed minibatches, batch norm's
running statistics), and the same step under torch.compile agrees with it."""

import os
import sys

import pytest

torch = pytest.importorskip("torch")  # the bench extra; CI without it skips

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import vs_pytorch  # noqa: E402

EXAMPLES, SEEDS, STEPS = 200, 2, 3
LRS = [0.5, 0.1, 0.3, 0.05]  # model k reads seed k % SEEDS's minibatches


def data():
  gen = torch.Generator().manual_seed(0)
  x = torch.rand((EXAMPLES, vs_pytorch.INPUTS), generator=gen)
  y = torch.randint(0, vs_pytorch.CLASSES, (EXAMPLES,), generator=gen)
  indices = torch.randint(0, EXAMPLES, (SEEDS, STEPS, vs_pytorch.BATCH), generator=gen)
  return x, y, indices


def one_by_one(x, y, indices, norm):
  """Each model of the ensemble's initial state trained alone by torch.nn and
  torch.optim: its parameters and its batch norms' running statistics."""
  params, _ = vs_pytorch.torch_func_state(norm, len(LRS))
  out = []
  for k, lr in enumerate(LRS):
    net = vs_pytorch.torch_mlp(norm)
    net.load_state_dict({n: p[k] for n, p in params.items()}, strict=False)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for idx in indices[k % SEEDS]:
      loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
      opt.zero_grad()
      loss.backward()
      opt.step()
    bns = [m for m in net if isinstance(m, torch.nn.BatchNorm1d)]
    out.append((dict(net.named_parameters()),
                [(m.running_mean, m.running_var) for m in bns]))
  return out


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_ensemble_trains_each_model_as_torch_nn_does(norm):
  x, y, indices = data()
  call = vs_pytorch.torch_func(x, y, indices, LRS, norm)
  call()
  params, running = call.state()
  for k, (want_params, want_running) in enumerate(one_by_one(x, y, indices, norm)):
    for name, want in want_params.items():
      torch.testing.assert_close(params[name][k], want.detach(), rtol=1e-5, atol=1e-6)
    # without batch norm there are no running statistics to compare
    assert len(want_running) == (vs_pytorch.DEPTH if norm == "batchnorm" else 0)
    for (mean, var), (want_mean, want_var) in zip(running, want_running):
      torch.testing.assert_close(mean[k], want_mean, rtol=1e-5, atol=1e-6)
      torch.testing.assert_close(var[k], want_var, rtol=1e-5, atol=1e-6)


def test_compiled_ensemble_matches_eager():
  x, y, indices = data()
  vs_pytorch.check_compiled_matches_eager(x, y, indices, LRS, "batchnorm")
