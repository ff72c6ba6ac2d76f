"""Initialisation as an axis: the static `init` and the dynamic `init_gain`
(docs/measurements.md, "Initialisation").

Each initialiser is checked against JAX's own initialiser called on the key
Flax hands the layer, and against the property that defines it (orthonormal
columns, the uniform bound, the variance); the default against a model made
of Flax's default layers; the gain against a hand-scaled copy; a gain sweep in
one compiled group against the un-vmapped reference loop of test_train.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from icsjax import analysis
from icsjax import config_files
from icsjax import data as data_lib
from icsjax import models
from icsjax import runner
from icsjax import study as study_lib
from icsjax import train
from icsjax.spec import GroupSpec
from test_study import assert_config_error, make_config
from test_train import reference_run

INITS = ("lecun_normal", "glorot_uniform", "he_normal", "orthogonal")
# What each name means, straight from JAX (lecun_normal: the kernel init Flax's
# Dense and Conv use when given none).
JAX_INITS = {"lecun_normal": nn.linear.default_kernel_init,
             "glorot_uniform": jax.nn.initializers.glorot_uniform(),
             "he_normal": jax.nn.initializers.he_normal(),
             "orthogonal": jax.nn.initializers.orthogonal()}
VGG = dict(arch="vgg", channels=(4, 8), convs_per_stage=1, width=12, depth=1)


def static_of(c):
  return {k: c[k] for k in study_lib.STATIC_FIELDS}


def group_spec(c):
  static = static_of(c)
  ds = data_lib.load(static)
  spec = GroupSpec(static=static, run=study_lib.run_spec(c), task=ds.task,
                   num_outputs=ds.num_outputs, input_shape=ds.input_shape,
                   num_train=ds.num_train, num_test=ds.num_test)
  return spec, ds


def init_params(c, seed=0, gain=1.0):
  spec, _ = group_spec(c)
  hp = {k: jnp.float32(c[k]) for k in study_lib.DYNAMIC_FIELDS}
  hp["init_gain"] = jnp.float32(gain)
  return spec, train.init_model(spec, seed, hp).params


def layer_keys(c, monkeypatch):
  """{layer: (key, shape)} of every kernel: the key Flax derives for it, caught
  by a spying initialiser (the key depends on the layer's name, not on the
  initialiser)."""
  calls = []
  spy = lambda key, shape, dtype=jnp.float32: (calls.append((key, shape)), jnp.zeros(shape))[1]
  with monkeypatch.context() as m:
    m.setitem(models.KERNEL_INITS, c.init, spy)
    spec, _ = init_params(c)
  assert len(calls) == len(spec.weight_layers)
  return dict(zip(spec.weight_layers, calls))  # layers are created in forward order


@pytest.mark.parametrize("arch", ["mlp", "vgg"])
@pytest.mark.parametrize("init", INITS)
def test_each_init_is_jax_initializer_on_flax_layer_key(init, arch, monkeypatch):
  c = tiny_config(init=init, **(VGG if arch == "vgg" else {}))
  c.norm = "layernorm"  # every layer then has a bias, left at zero
  want = {layer: JAX_INITS[init](key, shape, jnp.float32)
          for layer, (key, shape) in layer_keys(c, monkeypatch).items()}
  _, params = init_params(c)
  for layer, w in want.items():
    np.testing.assert_array_equal(params[layer]["kernel"], w, err_msg=layer)
    np.testing.assert_array_equal(params[layer]["bias"], 0.0, err_msg=layer)


def kernels(init, arch="mlp", seed=0):
  """The kernels of a wide model (enough weights for tight statistics)."""
  c = tiny_config(**{"init": init, "width": 200, "depth": 2, **(VGG if arch == "vgg" else {})})
  c.norm = "none"
  _, params = init_params(c, seed)
  return {k: np.asarray(v["kernel"], np.float64) for k, v in params.items() if "kernel" in v}


def test_orthogonal_kernels_have_orthonormal_columns_or_rows():
  w = kernels("orthogonal")
  eye = lambda n: np.eye(n)
  assert w["dense_1"].shape == (200, 200)
  np.testing.assert_allclose(w["dense_1"].T @ w["dense_1"], eye(200), atol=2e-5)
  np.testing.assert_allclose(w["dense_1"] @ w["dense_1"].T, eye(200), atol=2e-5)
  assert w["dense_0"].shape == (64, 200)  # digits: fewer rows than columns
  np.testing.assert_allclose(w["dense_0"] @ w["dense_0"].T, eye(64), atol=2e-5)
  assert w["dense_out"].shape == (200, 10)
  np.testing.assert_allclose(w["dense_out"].T @ w["dense_out"], eye(10), atol=2e-5)
  conv = kernels("orthogonal", "vgg")["conv_1"]  # (3, 3, 4, 8): 36 rows, 8 columns
  flat = conv.reshape(-1, conv.shape[-1])
  np.testing.assert_allclose(flat.T @ flat, eye(8), atol=2e-5)


def test_glorot_uniform_bound_and_variance():
  for name, w in kernels("glorot_uniform").items():
    fan_in, fan_out = w.shape
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound * (1 + 1e-6), name
    if w.size >= 10_000:  # U(-b, b): the largest of many draws lies close to b
      assert np.abs(w).max() > 0.99 * bound, name
      np.testing.assert_allclose(w.var(), 2 / (fan_in + fan_out), rtol=0.05, err_msg=name)


@pytest.mark.parametrize("init,scale", [("lecun_normal", 1.0), ("he_normal", 2.0)])
def test_normal_inits_variance_and_truncation(init, scale):
  for name, w in kernels(init).items():
    if w.size < 10_000:
      continue
    fan_in = w.shape[0]
    var = scale / fan_in
    np.testing.assert_allclose(w.var(), var, rtol=0.05, err_msg=name)
    np.testing.assert_allclose(w.mean(), 0.0, atol=0.05 * math.sqrt(var), err_msg=name)
    # a normal truncated at 2 of its standard deviations, widened to keep the variance
    sd = math.sqrt(var) / 0.87962566103423978
    assert np.abs(w).max() <= 2 * sd * (1 + 1e-6), name


class FlaxDefaultMLP(nn.Module):
  """The MLP with norm="none" spelled with Flax's default layers."""
  width: int
  depth: int
  num_outputs: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for i in range(self.depth):
      x = nn.sigmoid(nn.Dense(self.width, name=f"dense_{i}")(x))
    return nn.Dense(self.num_outputs, name="dense_out")(x)


def test_default_is_flax_default_init_bitwise():
  c = tiny_config()
  c.norm = "none"
  assert c.init == "lecun_normal" and c.init_gain == 1.0
  spec, params = init_params(c, seed=1)
  ref = FlaxDefaultMLP(c.width, c.depth, spec.num_outputs).init(
      jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(c.base_seed), 1), 0),
      jnp.zeros((1,) + spec.input_shape))["params"]
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("arch", ["mlp", "vgg"])
def test_init_gain_scales_every_kernel_and_nothing_else(arch):
  c = tiny_config(init="glorot_uniform", **(VGG if arch == "vgg" else {}))
  c.norm = "layernorm"  # biases and norm scales exist; the gain must leave them alone
  spec, ones = init_params(c)
  raw = spec.model.init({"params": jax.random.fold_in(jax.random.fold_in(
      jax.random.PRNGKey(c.base_seed), 0), 0)}, jnp.zeros((1,) + spec.input_shape),
      train=False, hp={})["params"]
  for gain in (2.0, 0.37):
    _, scaled = init_params(c, gain=gain)
    for layer, p in ones.items():
      for name, v in p.items():
        want = np.float32(gain) * np.asarray(v) if name == "kernel" else np.asarray(v)
        np.testing.assert_array_equal(scaled[layer][name], want, err_msg=f"{layer}/{name}")
        np.testing.assert_array_equal(raw[layer][name], v, err_msg=f"gain 1: {layer}/{name}")
  assert {n for p in ones.values() for n in p} == {"kernel", "bias", "scale"}


@pytest.mark.slow
def test_gain_sweep_in_one_group_equals_each_model_alone(tmp_path):
  c = tiny_config(steps=20, segment_steps=20, eval_every=20, init="orthogonal")
  c.sweep.norm = ("none",)
  c.sweep.lr = (0.2,)
  c.sweep.init_gain = (0.5, 2.0)
  study = study_lib.expand(c)
  (group,) = study.groups  # a dynamic field: one compiled group
  assert group.coords["init_gain"] == (0.5, 0.5, 2.0, 2.0)
  (gr,) = runner.build_group_runs(study)
  spec = gr.spec
  for m in range(group.size):  # vmapped init == each model's own
    hp = {k: jnp.float32(v[m]) for k, v in group.hparams.items()}
    alone = train.init_model(spec, group.coords["seed"][m], hp).params
    for a, b in zip(jax.tree_util.tree_leaves(alone),
                    jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x[m],
                                                                     gr.state.params))):
      np.testing.assert_array_equal(a, b)
  runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  ds = analysis.load(tmp_path / "w")
  assert {"variant", "seed", "init_gain"} <= set(ds.indexes["model"].names)
  static = dict(spec.static)
  hp = {k: jnp.float32(c[k]) for k in study_lib.DYNAMIC_FIELDS}
  hp.update(lr=jnp.float32(0.2), init_gain=jnp.float32(2.0))
  ref = reference_run(c, static, 3, hp, seed=1)
  got = ds.sel(variant="none", seed=1, init_gain=2.0).squeeze()
  for name, want in ref.items():
    np.testing.assert_allclose(got[name].values, want, rtol=1e-5, atol=2e-6, err_msg=name)
  # the two gains of one seed index start apart: they are different models
  small = ds.sel(variant="none", seed=1, init_gain=0.5).squeeze()
  assert not np.allclose(small.train_loss.values, got.train_loss.values)


def test_command_line_sweeps_of_init_and_gain():
  argv = ["main", "--config=default", "--config.sweep.init=('lecun_normal','orthogonal')",
          "--config.sweep.init_gain=(1.0,4.0)"]
  rest, sweeps = config_files.split_sweeps(argv)
  assert rest == argv[:2]
  assert sweeps == {"init": ("lecun_normal", "orthogonal"), "init_gain": (1.0, 4.0)}
  # bare words work too
  assert config_files.split_sweeps(["main", "--config.sweep.init=(he_normal,glorot_uniform)"])[
      1] == {"init": ("he_normal", "glorot_uniform")}
  c = tiny_config()
  c.sweep.norm = ("none",)
  config_files.add_sweeps(c, sweeps)
  study = study_lib.expand(c)
  # a static field splits the study into compiled groups; the gain stays inside each
  assert [g.name for g in study.groups] == ["init-lecun_normal_norm-none",
                                            "init-orthogonal_norm-none"]
  for g, init in zip(study.groups, ("lecun_normal", "orthogonal")):
    assert g.static["init"] == init and set(g.coords["init"]) == {init}
    assert sorted(set(g.coords["init_gain"])) == [1.0, 4.0]
    assert g.size == 2 * len(c.sweep.lr) * c.seeds


@pytest.mark.parametrize("changes,field,phrases", [
    (dict(init="xavier"), "init",
     ["must be one of", "lecun_normal, glorot_uniform, he_normal, orthogonal"]),
    (dict(init_gain=0), "init_gain", ["must be > 0"]),
    (dict(init_gain=-1.0), "init_gain", ["must be > 0"]),
    (dict(init_gain="4"), "init_gain", ["must be a number"]),
    (dict(init_gain=float("inf")), "init_gain", ["must be finite"]),
    (dict(sweep__init=("lecun_normal", "xavier")), "sweep.init", ["must be one of"]),
    (dict(sweep__init_gain=(1.0, 0.0)), "sweep.init_gain", ["must be > 0"]),
])
def test_bad_init_values_name_the_field(changes, field, phrases):
  assert_config_error(make_config(**changes), field, *phrases)
