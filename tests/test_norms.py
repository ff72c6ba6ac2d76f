"""Tests for icsjax.norms.Norm and icsjax.models.MLP against hand-written NumPy references.

Every reference below is float64 NumPy written from the design-doc definitions, not
from the module's code. Parameters (gamma, beta) and running statistics are set to
random, non-trivial values before every apply, and eps / bn_momentum are non-default,
so that a swapped EMA convention, a missing unbiased factor, a misplaced eps, or
noise applied before gamma/beta each makes some test fail.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import icsjax.norms as norms_mod
from icsjax.models import MLP
from icsjax.norms import Norm

BN_KINDS = ["batchnorm", "noisy_batchnorm", "l1_batchnorm", "l2_batchnorm", "linf_batchnorm"]
LP_P = {"l1_batchnorm": 1.0, "l2_batchnorm": 2.0, "linf_batchnorm": math.inf}
ALL_KINDS = ["none", "batchnorm", "noisy_batchnorm", "layernorm",
             "l1_batchnorm", "l2_batchnorm", "linf_batchnorm"]

EPS = 0.07          # non-default and large enough that its placement matters
MOM = 0.7           # non-default bn_momentum
RTOL = 2e-5
ATOL = 2e-5

SHAPES = {"2d": (6, 5), "4d": (3, 2, 2, 4)}


def _seed(*parts):
  return zlib.crc32(repr(parts).encode())


def make_hp(**overrides):
  base = dict(bn_momentum=MOM, noise_mean_range=0.5, noise_scale_low=0.8,
              noise_scale_high=1.3, noise_mean_spread=0.25, noise_scale_std=0.1)
  base.update(overrides)
  return {k: jnp.float32(v) for k, v in base.items()}


def rand_input(rng, shape):
  # non-zero mean and non-unit scale per unit, so centring and scaling both matter
  units = shape[-1]
  return (rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=units)
          + rng.uniform(-2.0, 2.0, size=units)).astype(np.float32)


# ----------------------------------------------------------------------------------
# NumPy float64 references
# ----------------------------------------------------------------------------------

def ema(old, new, m=MOM):
  return m * np.asarray(old, np.float64) + (1.0 - m) * np.asarray(new, np.float64)


def ref_bn_train(x, gamma, beta, eps):
  """Returns (y, batch_mean, unbiased_batch_var)."""
  x = np.asarray(x, np.float64)
  n = int(np.prod(x.shape[:-1]))
  flat = x.reshape(n, x.shape[-1])
  mu = flat.sum(0) / n
  var = ((flat - mu) ** 2).sum(0) / n
  y = gamma * (x - mu) / np.sqrt(var + eps) + beta
  return y, mu, var * n / (n - 1)


def ref_bn_eval(x, gamma, beta, run_mean, run_var, eps):
  x = np.asarray(x, np.float64)
  return gamma * (x - run_mean) / np.sqrt(np.asarray(run_var, np.float64) + eps) + beta


def _lp(c, p):
  if math.isinf(p):
    return np.abs(c).max(0)
  return (np.abs(c) ** p).mean(0) ** (1.0 / p)


def ref_lp_train(x, gamma, beta, eps, p, center):
  """Returns (y, batch_mean, batch_lp_scale)."""
  x = np.asarray(x, np.float64)
  flat = x.reshape(-1, x.shape[-1])
  mu = flat.mean(0)
  c = flat - mu if center else flat
  s = _lp(c, p)
  y = gamma * (c / (s + eps)) + beta
  return y.reshape(x.shape), mu, s


def ref_lp_eval(x, gamma, beta, run_mean, run_scale, eps, center):
  x = np.asarray(x, np.float64)
  c = x - run_mean if center else x
  return gamma * c / (np.asarray(run_scale, np.float64) + eps) + beta


def ref_ln(x, gamma, beta, eps):
  x = np.asarray(x, np.float64)
  axes = tuple(range(1, x.ndim))  # per example, over every unit of the layer
  mu = x.mean(axes, keepdims=True)
  var = ((x - mu) ** 2).mean(axes, keepdims=True)
  return gamma * (x - mu) / np.sqrt(var + eps) + beta


def ref_train(kind, x, gamma, beta, eps, center=True):
  """(y, new-mean target, new-scale target) for any batch-norm kind (pre-noise)."""
  if kind in LP_P:
    return ref_lp_train(x, gamma, beta, eps, LP_P[kind], center)
  return ref_bn_train(x, gamma, beta, eps)


def ref_eval(kind, x, gamma, beta, rm, rs, eps, center=True):
  if kind in LP_P:
    return ref_lp_eval(x, gamma, beta, rm, rs, eps, center)
  return ref_bn_eval(x, gamma, beta, rm, rs, eps)


def scale_name(kind):
  return "lp_scale" if kind in LP_P else "var"


# ----------------------------------------------------------------------------------
# helpers around the Flax module
# ----------------------------------------------------------------------------------

def init_random(kind, x, rng, eps=EPS, center=True):
  """Norm module + variables with random gamma, beta and running statistics."""
  module = Norm(kind, eps, center)
  variables = module.init({"params": jax.random.PRNGKey(0)}, jnp.asarray(x), train=True,
                          hp=make_hp())
  units = x.shape[-1]
  gamma = rng.uniform(0.5, 2.0, size=units) * rng.choice([-1.0, 1.0], size=units)
  beta = rng.normal(size=units)
  new = {"params": {"scale": jnp.asarray(gamma, jnp.float32),
                    "bias": jnp.asarray(beta, jnp.float32)}}
  if kind in BN_KINDS:
    rm = rng.normal(size=units)
    rs = rng.uniform(0.4, 3.0, size=units)
    new["batch_stats"] = {"mean": jnp.asarray(rm, jnp.float32),
                          scale_name(kind): jnp.asarray(rs, jnp.float32)}
  return module, new


def np64(a):
  return np.asarray(a, np.float64)


def train_step(module, variables, x, hp=None, rngs=None):
  y, upd = module.apply(variables, jnp.asarray(x), train=True, hp=hp or make_hp(),
                        mutable=["batch_stats"], rngs=rngs)
  return np.asarray(y), upd["batch_stats"]


# ----------------------------------------------------------------------------------
# Norm: structure and init
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_variable_structure_and_init_values(kind):
  x = jnp.ones((4, 3), jnp.float32)
  v = Norm(kind, EPS).init({"params": jax.random.PRNGKey(1)}, x, train=True, hp=make_hp())
  if kind == "none":
    assert not jax.tree_util.tree_leaves(v)
    return
  np.testing.assert_array_equal(v["params"]["scale"], np.ones(3))
  np.testing.assert_array_equal(v["params"]["bias"], np.zeros(3))
  if kind == "layernorm":
    assert "batch_stats" not in v
    return
  assert set(v["batch_stats"]) == {"mean", scale_name(kind)}
  # init in train mode must not apply an EMA step to the initial statistics
  np.testing.assert_array_equal(v["batch_stats"]["mean"], np.zeros(3))
  np.testing.assert_array_equal(v["batch_stats"][scale_name(kind)], np.ones(3))


def test_none_is_identity():
  rng = np.random.default_rng(0)
  x = rand_input(rng, (5, 4))
  m = Norm("none")
  v = m.init({"params": jax.random.PRNGKey(0)}, x, train=True, hp=make_hp())
  for train in (True, False):
    np.testing.assert_array_equal(m.apply(v, x, train=train, hp=make_hp()), x)


# ----------------------------------------------------------------------------------
# Norm: batch norms, train mode with running-statistic updates (one and two steps)
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("kind", BN_KINDS)
def test_batch_norm_train_two_steps(kind, shape):
  rng = np.random.default_rng(_seed(kind, shape))
  x1 = rand_input(rng, SHAPES[shape])
  x2 = rand_input(rng, SHAPES[shape])
  module, v = init_random(kind, x1, rng)
  gamma, beta = np64(v["params"]["scale"]), np64(v["params"]["bias"])
  sn = scale_name(kind)
  rm0, rs0 = np64(v["batch_stats"]["mean"]), np64(v["batch_stats"][sn])

  # step 1 (no "noise" rng: noisy BN must behave exactly as BN)
  y1, bs1 = train_step(module, v, x1)
  ref_y1, mu1, s1 = ref_train(kind, x1, gamma, beta, EPS)
  np.testing.assert_allclose(y1, ref_y1, rtol=RTOL, atol=ATOL)
  assert set(bs1) == {"mean", sn}
  np.testing.assert_allclose(bs1["mean"], ema(rm0, mu1), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(bs1[sn], ema(rs0, s1), rtol=RTOL, atol=ATOL)

  # step 2 from the updated statistics
  v2 = {"params": v["params"], "batch_stats": bs1}
  y2, bs2 = train_step(module, v2, x2)
  ref_y2, mu2, s2 = ref_train(kind, x2, gamma, beta, EPS)
  np.testing.assert_allclose(y2, ref_y2, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(bs2["mean"], ema(ema(rm0, mu1), mu2), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(bs2[sn], ema(ema(rs0, s1), s2), rtol=RTOL, atol=ATOL)

  # the test is discriminative: the wrong conventions would have been caught
  n = int(np.prod(x1.shape[:-1]))
  assert not np.allclose(bs1["mean"], ema(rm0, mu1, m=1 - MOM), rtol=RTOL, atol=ATOL)
  if kind in ("batchnorm", "noisy_batchnorm"):
    biased = s1 * (n - 1) / n
    assert not np.allclose(bs1[sn], ema(rs0, biased), rtol=RTOL, atol=ATOL)
    # unbiasing with the batch axis only (ignoring h, w) would also be caught
    nb = x1.shape[0]
    if nb != n:
      assert not np.allclose(bs1[sn], ema(rs0, biased * nb / (nb - 1)), rtol=RTOL, atol=ATOL)
  else:
    n_corr = s1 * n / (n - 1)
    assert not np.allclose(bs1[sn], ema(rs0, n_corr), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("kind", BN_KINDS)
def test_batch_norm_eval_uses_running_stats(kind, shape):
  rng = np.random.default_rng(1 + _seed(kind, shape))
  x = rand_input(rng, SHAPES[shape])
  module, v = init_random(kind, x, rng)
  gamma, beta = np64(v["params"]["scale"]), np64(v["params"]["bias"])
  rm, rs = np64(v["batch_stats"]["mean"]), np64(v["batch_stats"][scale_name(kind)])
  # a noise rng is supplied: eval mode must ignore it
  y, upd = module.apply(v, jnp.asarray(x), train=False, hp=make_hp(),
                        rngs={"noise": jax.random.PRNGKey(3)}, mutable=["batch_stats"])
  np.testing.assert_allclose(y, ref_eval(kind, x, gamma, beta, rm, rs, EPS), rtol=RTOL, atol=ATOL)
  # eval mode leaves the running statistics unchanged
  for name, val in upd["batch_stats"].items():
    np.testing.assert_array_equal(val, v["batch_stats"][name])
  # eval does not use batch statistics
  assert not np.allclose(y, ref_train(kind, x, gamma, beta, EPS)[0], rtol=1e-3, atol=1e-3)
  # also works without mutable collections
  y_plain = module.apply(v, jnp.asarray(x), train=False, hp=make_hp())
  np.testing.assert_array_equal(y_plain, y)


@pytest.mark.parametrize("kind", list(LP_P))
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_lp_batch_norm_uncentred(kind, shape):
  rng = np.random.default_rng(7 + _seed(kind, shape))
  x1 = rand_input(rng, SHAPES[shape])
  x2 = rand_input(rng, SHAPES[shape])
  module, v = init_random(kind, x1, rng, center=False)
  p = LP_P[kind]
  gamma, beta = np64(v["params"]["scale"]), np64(v["params"]["bias"])
  rm0, rs0 = np64(v["batch_stats"]["mean"]), np64(v["batch_stats"]["lp_scale"])

  y1, bs1 = train_step(module, v, x1)
  ref_y1, mu1, s1 = ref_lp_train(x1, gamma, beta, EPS, p, center=False)
  np.testing.assert_allclose(y1, ref_y1, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(bs1["mean"], ema(rm0, mu1), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(bs1["lp_scale"], ema(rs0, s1), rtol=RTOL, atol=ATOL)
  # centring would have given something else
  assert not np.allclose(y1, ref_lp_train(x1, gamma, beta, EPS, p, True)[0], rtol=1e-3, atol=1e-3)

  v2 = {"params": v["params"], "batch_stats": bs1}
  y2, bs2 = train_step(module, v2, x2)
  ref_y2, mu2, s2 = ref_lp_train(x2, gamma, beta, EPS, p, center=False)
  np.testing.assert_allclose(y2, ref_y2, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(bs2["mean"], ema(ema(rm0, mu1), mu2), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(bs2["lp_scale"], ema(ema(rs0, s1), s2), rtol=RTOL, atol=ATOL)

  # eval: c = x (no running-mean subtraction), scale = running lp scale
  y_eval = module.apply(v2 | {"batch_stats": bs2}, jnp.asarray(x2), train=False, hp=make_hp())
  ref = ref_lp_eval(x2, gamma, beta, np64(bs2["mean"]), np64(bs2["lp_scale"]), EPS, center=False)
  np.testing.assert_allclose(y_eval, ref, rtol=RTOL, atol=ATOL)


def test_lp_scale_orders_are_distinct():
  # guards against the three lp kinds silently sharing one p
  rng = np.random.default_rng(11)
  x = rand_input(rng, (8, 3))
  outs = {}
  for kind in LP_P:
    module, v = init_random(kind, x, np.random.default_rng(0))
    outs[kind] = train_step(module, v, x)[1]["lp_scale"]
  for a in LP_P:
    for b in LP_P:
      if a < b:
        assert not np.allclose(outs[a], outs[b], rtol=1e-3)


@pytest.mark.parametrize("eps", [1e-10])
def test_l2_batchnorm_equals_batchnorm_for_tiny_eps(eps):
  rng = np.random.default_rng(5)
  for shape in SHAPES.values():
    x = rand_input(rng, shape)
    bn, v_bn = init_random("batchnorm", x, rng, eps=eps)
    l2 = Norm("l2_batchnorm", eps)
    v_l2 = {"params": v_bn["params"],
            "batch_stats": {"mean": v_bn["batch_stats"]["mean"],
                            "lp_scale": jnp.sqrt(v_bn["batch_stats"]["var"])}}
    y_bn, _ = train_step(bn, v_bn, x)
    y_l2, _ = train_step(l2, v_l2, x)
    np.testing.assert_allclose(y_l2, y_bn, rtol=1e-5, atol=1e-5)
    e_bn = bn.apply(v_bn, x, train=False, hp=make_hp())
    e_l2 = l2.apply(v_l2, x, train=False, hp=make_hp())
    np.testing.assert_allclose(e_l2, e_bn, rtol=1e-5, atol=1e-5)


def test_hp_is_traced_and_vmappable():
  """bn_momentum arrives as a traced scalar: a vmapped sweep gives per-value EMAs."""
  rng = np.random.default_rng(9)
  x = rand_input(rng, (6, 3))
  module, v = init_random("batchnorm", x, rng)
  moms = jnp.asarray([0.0, 0.5, 0.9, 0.99], jnp.float32)

  @jax.jit
  def step(m):
    hp = make_hp()
    hp["bn_momentum"] = m
    return module.apply(v, x, train=True, hp=hp, mutable=["batch_stats"])[1]["batch_stats"]

  out = jax.vmap(step)(moms)
  _, mu, var_u = ref_bn_train(x, np64(v["params"]["scale"]), np64(v["params"]["bias"]), EPS)
  for i, m in enumerate(np.asarray(moms, np.float64)):
    np.testing.assert_allclose(out["mean"][i], ema(v["batch_stats"]["mean"], mu, m),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["var"][i], ema(v["batch_stats"]["var"], var_u, m),
                               rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------
# Norm: layernorm
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 4)])
def test_layernorm(shape):
  rng = np.random.default_rng(13)
  x = rand_input(rng, shape)
  module, v = init_random("layernorm", x, rng)
  ref = ref_ln(x, np64(v["params"]["scale"]), np64(v["params"]["bias"]), EPS)
  y_tr, upd = module.apply(v, x, train=True, hp=make_hp(), mutable=["batch_stats"])
  assert not jax.tree_util.tree_leaves(upd)
  y_ev = module.apply(v, x, train=False, hp=make_hp())
  np.testing.assert_allclose(y_tr, ref, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(y_ev, ref, rtol=RTOL, atol=ATOL)
  # per-sample: permuting the batch permutes the output
  perm = rng.permutation(shape[0])
  np.testing.assert_allclose(module.apply(v, x[perm], train=True, hp=make_hp()), y_ev[perm],
                             rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------
# Noisy batch norm
# ----------------------------------------------------------------------------------

def _noisy_setup(rng, shape, gamma=None, beta=None):
  x = rand_input(rng, shape)
  module, v = init_random("noisy_batchnorm", x, rng)
  if gamma is not None:
    v["params"]["scale"] = jnp.full((shape[-1],), gamma, jnp.float32)
  if beta is not None:
    v["params"]["bias"] = jnp.full((shape[-1],), beta, jnp.float32)
  y_bn = ref_bn_train(x, np64(v["params"]["scale"]), np64(v["params"]["bias"]), EPS)[0]
  return x, module, v, y_bn


def test_noisy_no_rng_and_eval_have_no_noise():
  rng = np.random.default_rng(21)
  x, module, v, y_bn = _noisy_setup(rng, (8, 4))
  hp = make_hp()
  y_no_rng = module.apply(v, x, train=True, hp=hp, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(y_no_rng, y_bn, rtol=RTOL, atol=ATOL)
  y_noisy, bs = train_step(module, v, x, hp, rngs={"noise": jax.random.PRNGKey(0)})
  assert np.abs(y_noisy - y_bn).max() > 1e-2  # the rng does switch noise on
  # running stats are the pre-noise BN statistics
  _, mu, var_u = ref_bn_train(x, np64(v["params"]["scale"]), np64(v["params"]["bias"]), EPS)
  np.testing.assert_allclose(bs["mean"], ema(v["batch_stats"]["mean"], mu), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(bs["var"], ema(v["batch_stats"]["var"], var_u), rtol=RTOL, atol=ATOL)
  # eval: running statistics, no noise, even with a noise rng
  ref_ev = ref_bn_eval(x, np64(v["params"]["scale"]), np64(v["params"]["bias"]),
                       np64(v["batch_stats"]["mean"]), np64(v["batch_stats"]["var"]), EPS)
  for rngs in (None, {"noise": jax.random.PRNGKey(1)}):
    y_ev = module.apply(v, x, train=False, hp=hp, rngs=rngs)
    np.testing.assert_allclose(y_ev, ref_ev, rtol=RTOL, atol=ATOL)


def test_noisy_is_deterministic_per_key():
  rng = np.random.default_rng(22)
  x, module, v, _ = _noisy_setup(rng, (8, 4))
  a = train_step(module, v, x, rngs={"noise": jax.random.PRNGKey(5)})[0]
  b = train_step(module, v, x, rngs={"noise": jax.random.PRNGKey(5)})[0]
  c = train_step(module, v, x, rngs={"noise": jax.random.PRNGKey(6)})[0]
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-3


def test_noisy_without_spread_or_std_is_one_scalar_affine_map():
  """std = d = 0: y_noisy = a * y_bn + b, one (a, b) per layer call, a in [low, high],
  b in [-r, r]. Non-trivial per-unit gamma/beta make noise-before-affine fail."""
  rng = np.random.default_rng(23)
  r, low, high = 0.5, 0.8, 1.3
  hp = make_hp(noise_mean_range=r, noise_scale_low=low, noise_scale_high=high,
               noise_mean_spread=0.0, noise_scale_std=0.0)
  x, module, v, y_bn = _noisy_setup(rng, (16, 5))
  pairs = []
  for seed in range(6):
    y = train_step(module, v, x, hp, rngs={"noise": jax.random.PRNGKey(seed)})[0]
    design = np.stack([y_bn.ravel(), np.ones(y_bn.size)], 1)
    (a, b), *_ = np.linalg.lstsq(design, np64(y).ravel(), rcond=None)
    np.testing.assert_allclose(y, a * y_bn + b, rtol=1e-5, atol=1e-5)
    assert low - 1e-6 <= a <= high + 1e-6
    assert -r - 1e-6 <= b <= r + 1e-6
    pairs.append((a, b))
  pairs = np.array(pairs)
  assert np.ptp(pairs[:, 0]) > 1e-3 and np.ptp(pairs[:, 1]) > 1e-3  # fresh per call


def _sample_layer_constants(module, v, x, hp, n):
  keys = jax.random.split(jax.random.PRNGKey(123), n)
  f = jax.jit(jax.vmap(lambda k: module.apply(v, x, train=True, hp=hp, rngs={"noise": k},
                                              mutable=["batch_stats"])[0]))
  return np.asarray(f(keys), np.float64)


def test_noisy_layer_mean_distribution():
  """gamma = beta = 0 and d = 0: y = mu_t everywhere, mu_t ~ U(-r, r)."""
  r = 0.6
  hp = make_hp(noise_mean_range=r, noise_mean_spread=0.0, noise_scale_std=0.0)
  x, module, v, _ = _noisy_setup(np.random.default_rng(24), (4, 3), gamma=0.0, beta=0.0)
  ys = _sample_layer_constants(module, v, x, hp, 400)
  mu_t = ys[:, 0, 0]
  np.testing.assert_allclose(ys, mu_t[:, None, None] * np.ones_like(ys), atol=1e-6)
  assert mu_t.min() >= -r - 1e-6 and mu_t.max() <= r + 1e-6
  assert mu_t.min() < -0.9 * r and mu_t.max() > 0.9 * r
  assert abs(mu_t.mean()) < 0.1 * r
  np.testing.assert_allclose(mu_t.std(), r / np.sqrt(3), rtol=0.12)


def test_noisy_layer_scale_distribution():
  """gamma = 0, beta = 1, r = d = std = 0: y = sigma_t everywhere, sigma_t ~ U(low, high)."""
  low, high = 0.7, 1.5
  hp = make_hp(noise_mean_range=0.0, noise_scale_low=low, noise_scale_high=high,
               noise_mean_spread=0.0, noise_scale_std=0.0)
  x, module, v, _ = _noisy_setup(np.random.default_rng(25), (4, 3), gamma=0.0, beta=1.0)
  ys = _sample_layer_constants(module, v, x, hp, 400)
  s_t = ys[:, 0, 0]
  np.testing.assert_allclose(ys, s_t[:, None, None] * np.ones_like(ys), atol=1e-6)
  assert s_t.min() >= low - 1e-6 and s_t.max() <= high + 1e-6
  assert s_t.min() < low + 0.1 * (high - low) and s_t.max() > high - 0.1 * (high - low)
  assert abs(s_t.mean() - (low + high) / 2) < 0.1 * (high - low)
  np.testing.assert_allclose(s_t.std(), (high - low) / np.sqrt(12), rtol=0.12)


def test_noisy_per_sample_unit_mean_spread():
  """low = high = sigma, std = 0: y_noisy - sigma * y_bn = m ~ U(mu_t - d, mu_t + d)
  independently per sample and unit."""
  sigma, r, d = 1.2, 0.5, 0.25
  hp = make_hp(noise_mean_range=r, noise_scale_low=sigma, noise_scale_high=sigma,
               noise_mean_spread=d, noise_scale_std=0.0)
  x, module, v, y_bn = _noisy_setup(np.random.default_rng(26), (3000, 6))
  y = train_step(module, v, x, hp, rngs={"noise": jax.random.PRNGKey(7)})[0]
  m = np64(y) - sigma * y_bn
  mu_t = (m.max() + m.min()) / 2
  assert -r - 1e-4 <= mu_t <= r + 1e-4
  assert np.ptp(m) <= 2 * d + 1e-4 and np.ptp(m) > 2 * d * 0.98
  np.testing.assert_allclose(m.std(0), d / np.sqrt(3), rtol=0.06)   # per unit
  np.testing.assert_allclose(m.mean(0), mu_t, atol=0.03)
  corr = np.corrcoef(m.T)
  assert np.abs(corr[np.triu_indices(6, 1)]).max() < 0.1             # independent across units
  assert np.abs(np.corrcoef(m[:-1].ravel(), m[1:].ravel())[0, 1]) < 0.1


def test_noisy_per_sample_unit_scale_spread():
  """gamma = 0, beta = 1, r = d = 0, low = high = sigma: y = s ~ N(sigma, std^2)."""
  sigma, std = 1.1, 0.2
  hp = make_hp(noise_mean_range=0.0, noise_scale_low=sigma, noise_scale_high=sigma,
               noise_mean_spread=0.0, noise_scale_std=std)
  x, module, v, _ = _noisy_setup(np.random.default_rng(27), (3000, 6), gamma=0.0, beta=1.0)
  s = np64(train_step(module, v, x, hp, rngs={"noise": jax.random.PRNGKey(8)})[0])
  np.testing.assert_allclose(s.mean(), sigma, atol=0.01)
  np.testing.assert_allclose(s.std(0), std, rtol=0.06)
  # Gaussian, not uniform: excess kurtosis ~ 0 (uniform would give -1.2)
  z = (s - s.mean()) / s.std()
  assert abs((z ** 4).mean() - 3.0) < 0.3
  corr = np.corrcoef(s.T)
  assert np.abs(corr[np.triu_indices(6, 1)]).max() < 0.1


def test_noisy_decomposition_secondary(monkeypatch):
  """Secondary: y_noisy == s * y_bn + m for the (s, m) santurkar_noise returned."""
  captured = []
  orig = norms_mod.santurkar_noise

  def spy(key, shape, hp, dtype):
    s, m = orig(key, shape, hp, dtype)
    captured.append((np.asarray(key), shape, np.asarray(s), np.asarray(m)))
    return s, m

  monkeypatch.setattr(norms_mod, "santurkar_noise", spy)
  rng = np.random.default_rng(28)
  for shape in SHAPES.values():
    captured.clear()
    x = rand_input(rng, shape)
    module, v = init_random("noisy_batchnorm", x, rng)
    y_bn = ref_bn_train(x, np64(v["params"]["scale"]), np64(v["params"]["bias"]), EPS)[0]
    y = train_step(module, v, x, rngs={"noise": jax.random.PRNGKey(2)})[0]
    assert len(captured) == 1
    _, _, s, m = captured[0]
    # per sample & unit; for 4-D inputs the design doc does not pin down whether h, w
    # share a draw, so only require that the draw broadcasts against x
    assert np.broadcast_shapes(s.shape, m.shape, x.shape) == x.shape
    if x.ndim == 2:
      assert s.shape == m.shape == x.shape
    np.testing.assert_allclose(y, s * y_bn + m, rtol=RTOL, atol=ATOL)

  # in an MLP each norm layer draws its own key and its own layer constants
  captured.clear()
  x = rand_input(rng, (8, 3))
  model = MLP(width=4, depth=2, num_outputs=2, activation="identity", norm="noisy_batchnorm")
  mv = model.init({"params": jax.random.PRNGKey(0)}, x, train=True, hp=make_hp())
  assert not captured  # init without a noise rng draws no noise
  model.apply(mv, x, train=True, hp=make_hp(), rngs={"noise": jax.random.PRNGKey(4)},
              mutable=["batch_stats"])
  assert len(captured) == 2
  assert not np.array_equal(captured[0][0], captured[1][0])


# ----------------------------------------------------------------------------------
# MLP
# ----------------------------------------------------------------------------------

def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _randomise_mlp(variables, rng, depth):
  params = jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.8, jnp.float32), variables["params"])
  out = {"params": params}
  if "batch_stats" in variables:
    out["batch_stats"] = {
        f"norm_{i}": {"mean": jnp.asarray(rng.normal(size=st["mean"].shape), jnp.float32),
                      "var": jnp.asarray(rng.uniform(0.4, 3.0, size=st["var"].shape),
                                         jnp.float32)}
        for i, st in ((i, variables["batch_stats"][f"norm_{i}"]) for i in range(depth))}
  return out


def _np_mlp_bn(v, x, depth, train, eps):
  p = jax.tree_util.tree_map(np64, v["params"])
  h = np64(x)
  taps, stats = [], {}
  for i in range(depth):
    pre = h @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"].get("bias", 0.0)
    g, b = p[f"norm_{i}"]["scale"], p[f"norm_{i}"]["bias"]
    bs = v["batch_stats"][f"norm_{i}"]
    if train:
      z, mu, var_u = ref_bn_train(pre, g, b, eps)
      stats[f"norm_{i}"] = {"mean": ema(bs["mean"], mu), "var": ema(bs["var"], var_u)}
    else:
      z = ref_bn_eval(pre, g, b, np64(bs["mean"]), np64(bs["var"]), eps)
    taps.append((pre, z))
    h = _sigmoid(z)
  out = h @ p["dense_out"]["kernel"] + p["dense_out"]["bias"]
  return out, taps, stats


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_mlp_batchnorm_matches_numpy(train):
  depth, width, nout = 3, 5, 2
  rng = np.random.default_rng(31)
  x = rand_input(rng, (7, 4))
  model = MLP(width=width, depth=depth, num_outputs=nout, activation="sigmoid",
              norm="batchnorm", norm_eps=EPS)
  v = _randomise_mlp(model.init({"params": jax.random.PRNGKey(0)}, x, train=True, hp=make_hp()),
                     rng, depth)
  ref_out, ref_taps, ref_stats = _np_mlp_bn(v, x, depth, train, EPS)
  (out, taps), upd = model.apply(v, x, train=train, hp=make_hp(), mutable=["batch_stats"])
  assert out.shape == (7, nout)
  assert len(taps) == depth
  tol = dict(rtol=5e-5, atol=5e-5)
  np.testing.assert_allclose(out, ref_out, **tol)
  for (pre, z), (rpre, rz) in zip(taps, ref_taps):
    assert pre.shape == z.shape == (7, width)
    np.testing.assert_allclose(pre, rpre, **tol)
    np.testing.assert_allclose(z, rz, **tol)
  for i in range(depth):
    got = upd["batch_stats"][f"norm_{i}"]
    if train:
      np.testing.assert_allclose(got["mean"], ref_stats[f"norm_{i}"]["mean"], **tol)
      np.testing.assert_allclose(got["var"], ref_stats[f"norm_{i}"]["var"], **tol)
    else:
      for name in ("mean", "var"):
        np.testing.assert_array_equal(got[name], v["batch_stats"][f"norm_{i}"][name])


def test_mlp_none_taps_and_noisy_without_rng():
  rng = np.random.default_rng(32)
  x = rand_input(rng, (6, 3))
  m_none = MLP(width=4, depth=2, num_outputs=2, norm="none", activation="tanh")
  v = m_none.init({"params": jax.random.PRNGKey(0)}, x, train=True, hp=make_hp())
  out, taps = m_none.apply(v, x, train=True, hp=make_hp())
  p = jax.tree_util.tree_map(np64, v["params"])
  h = np64(x)
  for i, (pre, z) in enumerate(taps):
    np.testing.assert_array_equal(pre, z)
    rpre = h @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"]["bias"]
    np.testing.assert_allclose(pre, rpre, rtol=5e-5, atol=5e-5)
    h = np.tanh(rpre)
  np.testing.assert_allclose(out, h @ p["dense_out"]["kernel"] + p["dense_out"]["bias"],
                             rtol=5e-5, atol=5e-5)

  # noisy BN MLP with no noise rng == BN MLP with the same variables
  kw = dict(width=4, depth=2, num_outputs=2, norm_eps=EPS)
  bn, noisy = MLP(norm="batchnorm", **kw), MLP(norm="noisy_batchnorm", **kw)
  vb = _randomise_mlp(bn.init({"params": jax.random.PRNGKey(1)}, x, train=True, hp=make_hp()),
                      rng, 2)
  a = bn.apply(vb, x, train=True, hp=make_hp(), mutable=["batch_stats"])
  b = noisy.apply(vb, x, train=True, hp=make_hp(), mutable=["batch_stats"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_mlp_paired_initialisation_across_norms():
  x = jnp.ones((4, 6), jnp.float32)
  depth = 3
  inits = {}
  for kind in ALL_KINDS:
    for center in (True, False):
      model = MLP(width=5, depth=depth, num_outputs=3, norm=kind, lp_center=center)
      inits[(kind, center)] = model.init({"params": jax.random.PRNGKey(42)}, x, train=True,
                                         hp=make_hp())["params"]
  ref = inits[("none", True)]
  names = [f"dense_{i}" for i in range(depth)] + ["dense_out"]
  assert set(ref) == set(names)
  for (kind, center), params in inits.items():
    for name in names:
      for leaf in ("kernel", "bias"):
        if leaf in params[name]:
          np.testing.assert_array_equal(params[name][leaf], ref[name][leaf],
                                        err_msg=f"{kind} {center} {name}/{leaf}")
      assert "kernel" in params[name]
    if kind != "none":
      assert all(f"norm_{i}" in params for i in range(depth))
  other = MLP(width=5, depth=depth, num_outputs=3, norm="batchnorm").init(
      {"params": jax.random.PRNGKey(43)}, x, train=True, hp=make_hp())["params"]
  assert not np.array_equal(other["dense_0"]["kernel"], ref["dense_0"]["kernel"])
  # distinct layers get distinct kernels (not one key reused for every layer)
  assert not np.array_equal(ref["dense_1"]["kernel"], ref["dense_2"]["kernel"])


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("center", [True, False])
def test_mlp_hidden_bias_only_where_norm_does_not_cancel_it(kind, center):
  """models.py: a hidden Dense has no bias iff its norm subtracts the batch mean
  (batchnorm, noisy_batchnorm, centred lp kinds); dense_out always has one."""
  x = jnp.ones((4, 3), jnp.float32)
  model = MLP(width=5, depth=2, num_outputs=2, norm=kind, lp_center=center)
  params = model.init({"params": jax.random.PRNGKey(0)}, x, train=True, hp=make_hp())["params"]
  cancels = kind in ("batchnorm", "noisy_batchnorm") or (kind in LP_P and center)
  for i in range(2):
    assert ("bias" in params[f"dense_{i}"]) == (not cancels)
  assert "bias" in params["dense_out"]
