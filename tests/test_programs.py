"""Logical groups in padded compiled programs (icsjax.programs): a group trained
inside a padded program writes what it writes trained alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from icsjax import norms
from icsjax import padding
from icsjax import programs
from icsjax import runner
from icsjax import store
from icsjax import study as study_lib
from icsjax.forward import model_fns
from icsjax.probes import curvature

NARROW = "width-6_depth-2_norm-l2_batchnorm"  # the most padded group of `family_config`


def family_config(**overrides):
  """Four groups of one family (width 6 or 8, depth 2 or 3), every record kind on;
  the l2 norm, whose scale has an infinite derivative at a padding unit's constant 0."""
  c = tiny_config(steps=10, segment_steps=10, record_every=5, eval_every=5, ics_every=5,
                  landscape_every=5, curvature_every=5, lanczos_steps=4, layer_lanczos_steps=4,
                  slq_vectors=1, hutchinson_samples=2, curvature_batch_size=16,
                  checkpoint_segments=0)
  c.sweep.norm = ("l2_batchnorm",)
  c.sweep.lr = (0.1,)
  c.sweep.width = (6, 8)
  c.sweep.depth = (2, 3)
  for k, v in overrides.items():
    c[k] = v
  return c


def close(alone, padded):
  """Float32 rounding of O(1) values over 10 steps: the padded program adds
  exact zeros in another order, so values agree to 1e-5 of each variable's
  largest, and to 1e-6 where a value is itself rounding noise (a batch norm's
  output mean)."""
  a, b = np.asarray(alone, np.float64), np.asarray(padded, np.float64)
  assert a.shape == b.shape
  assert (np.isnan(a) == np.isnan(b)).all()
  real = ~np.isnan(a)
  if real.any():
    scale = np.max(np.abs(a[real]))
    np.testing.assert_allclose(b[real], a[real], rtol=0, atol=1e-5 * scale + 1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The whole family run as one padded program, and its most padded group alone."""
  padded = tmp_path_factory.mktemp("padded")
  alone = tmp_path_factory.mktemp("alone")
  runner.run(family_config(programs="padded"), padded, progress=False, log=lambda *_: None,
             tensorboard=False)
  runner.run(family_config(programs="padded"), alone, progress=False, log=lambda *_: None,
             tensorboard=False, groups=[NARROW])
  return store.load(padded), store.load(alone)


def test_a_group_in_a_padded_program_writes_what_it_writes_alone(runs):
  padded, alone = runs
  assert len(padded) == 4
  a, p = alone[NARROW], padded[NARROW]
  # The same variables, dims and coordinates: analysis cannot tell how it ran.
  assert set(a.data_vars) == set(p.data_vars)
  assert a.sizes == p.sizes
  for name in a.coords:
    assert np.array_equal(a[name].values, p[name].values), name
  for name, var in a.data_vars.items():
    assert var.dims == p[name].dims, name
    if var.dtype.kind in "fiu":
      close(var.values, p[name].values)
    else:
      assert np.array_equal(var.values, p[name].values), name
  # Padding units and layers never reach a record: the narrow group has 6 units.
  assert a.sizes["unit"] == 6 and list(a.layer.values) == ["dense_0", "dense_1"]


def test_padded_state_round_trips_through_the_groups_own_shapes():
  study = study_lib.expand(family_config(programs="padded", record_every=5))
  (program,), _ = programs.plan(study, "cpu")
  (gr,) = runner.build_group_runs(study, programs=(program,))
  states = runner.host_states(gr)
  narrow = states[NARROW]
  assert narrow.params["dense_0"]["kernel"].shape == (2, 64, 6)
  assert "dense_2" not in narrow.params
  back = runner.place_states(gr, states)
  for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(gr.state)):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  # Each group starts from its own network's initial weights, padded with zeros.
  alone = runner.build_group_runs(study_lib.expand(family_config(programs="separate")))
  own = {g.name: runner.host_state(r) for r in alone for g in r.groups}
  for name, state in states.items():
    for x, y in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(own[name])):
      assert np.array_equal(np.asarray(x), np.asarray(y)), name


def test_noise_and_probe_vectors_are_the_networks_own_padded():
  key = jax.random.PRNGKey(3)
  hp = {"noise_mean_range": 0.5, "noise_scale_low": 1.0, "noise_scale_high": 1.25,
        "noise_mean_spread": 0.1, "noise_scale_std": 0.1}
  for variant, units in enumerate((6, 8, 0)):
    s, m = norms.variant_noise(key, (5, 8), {**hp, norms.PROGRAM_VARIANT: variant},
                               jnp.float32, (6, 8, 0))
    own_s, own_m = norms.santurkar_noise(key, (5, units), hp, jnp.float32)
    assert np.array_equal(np.asarray(s[:, :units]), np.asarray(own_s))
    assert np.array_equal(np.asarray(m[:, :units]), np.asarray(own_m))
    assert not np.asarray(s[:, units:]).any() and not np.asarray(m[:, units:]).any()
  study = study_lib.expand(family_config(programs="padded"))
  (program,), _ = programs.plan(study, "cpu")
  (gr,) = runner.build_group_runs(study, programs=(program,))
  params = jax.tree_util.tree_map(lambda a: a[0], gr.state.params)
  for variant, own_shapes in enumerate(gr.spec.variant_param_shapes):
    fns = model_fns(gr.spec, {norms.PROGRAM_VARIANT: jnp.float32(variant)})
    drawn = fns.random_like(curvature.rademacher, key, params)
    own = curvature.rademacher(key, own_shapes)
    assert jax.tree_util.tree_structure(padding.unpad_tree(drawn, own_shapes)) == \
        jax.tree_util.tree_structure(own)
    for x, y in zip(jax.tree_util.tree_leaves(padding.unpad_tree(drawn, own_shapes)),
                    jax.tree_util.tree_leaves(own)):
      assert np.array_equal(np.asarray(x), np.asarray(y))
    # zero wherever the network has no parameter
    total = sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree_util.tree_leaves(drawn))
    assert total == sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(own))


def test_the_plan_pads_families_only_when_it_can_and_it_pays():
  study = study_lib.expand(family_config(programs="auto"))
  assert [p.padded for p in programs.plan(study, "cpu")[0]] in ([True], [False] * 4)
  separate, (choice,) = programs.plan(study_lib.expand(family_config(programs="separate")),
                                      "cpu")
  assert len(separate) == 4 and not choice.padded
  assert 0 < choice.waste < 1  # width 6, depth 2 inside width 8, depth 3
  # A per-layer probe that would run more steps on a padded kernel: never padded.
  c = family_config(programs="padded", layer_lanczos_steps=40)
  progs, (choice,) = programs.plan(study_lib.expand(c), "cpu")
  assert len(progs) == 4 and "layer_lanczos_steps=40" in choice.describe()
  # Different norms are different families.
  c = family_config(programs="padded")
  c.sweep.norm = ("none", "batchnorm")
  progs, _ = programs.plan(study_lib.expand(c), "cpu")
  assert len(progs) == 2 and all(len(p.groups) == 4 for p in progs)
  # The cost model: padding pays where launches per step dominate, not where
  # the padded work does; compiling costs the same either way.
  small, big = family_config().to_dict(), family_config(width=512, depth=3).to_dict()
  for s in (small, big):
    s.pop("sweep")
  launches = {"step_seconds_per_layer": 1e-3, "compile_seconds": 10.0,
              "compile_seconds_per_layer": 1.0, "flops_per_second": 1e15}
  compute = {**launches, "step_seconds_per_layer": 0.0, "flops_per_second": 1e9}
  est = programs.estimate_seconds
  for costs, pays in ((launches, True), (compute, False)):
    padded = est(big, 10, [small, big], 100, costs)
    separate = est(small, 5, [small], 100, costs) + est(big, 5, [big], 100, costs)
    assert (padded < separate) == pays
  assert est(big, 10, [small, big], 0, compute) == (est(small, 5, [small], 0, compute)
                                                    + est(big, 5, [big], 0, compute))


def test_multiply_adds_of_a_network():
  c = family_config()
  static = {k: c[k] for k in study_lib.STATIC_FIELDS}
  # digits: 64 inputs, 10 classes; 2 hidden layers of 8
  assert programs.model_macs(static) == 64 * 8 + 8 * 8 + 8 * 10


def test_one_step_of_a_padded_vgg_equals_the_network_alone():
  """VGG channels padded stage by stage, the dense widths too: its first dense
  layer's rows, one block of channels per position, padded block by block."""
  c = tiny_config(arch="vgg", activation="relu", steps=10, segment_steps=10, record_every=5,
                  eval_every=5, programs="padded", convs_per_stage=1)
  c.sweep.norm = ("batchnorm",)
  c.sweep.lr = (0.1,)
  c.sweep.channels = ((4, 8), (6, 8))
  c.sweep.width = (8, 12)
  study = study_lib.expand(c)
  (program,), _ = programs.plan(study, "cpu")
  (gr,) = runner.build_group_runs(study, programs=(program,))
  narrow = "width-8_channels-(4, 8)_norm-batchnorm"
  (own_group,) = [g for g in study.groups if g.name == narrow]
  (alone,) = runner.build_group_runs(study, programs=(programs.Program((own_group,),
                                                                       own_group.static),))
  assert alone.spec.static["channels"] == (4, 8) and gr.spec.static["channels"] == (6, 8)
  first = program.offsets()[[g.name for g in program.groups].index(narrow)]
  one = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)
  x, y = gr.data.train_x[:16], gr.data.train_y[:16]
  step = lambda loop: jax.jit(lambda s, h: loop.step(s, h, x, y, 1))
  state, metrics, inside = step(gr.loop)(one(gr.state, first), one(gr.hparams, first))
  own_state, own_metrics, own_inside = step(alone.loop)(one(alone.state, 0),
                                                        one(alone.hparams, 0))
  np.testing.assert_allclose(metrics["train_loss"], own_metrics["train_loss"], rtol=1e-5)
  cut = padding.unpad_tree(jax.tree_util.tree_map(np.asarray, state), own_state,
                           gr.spec.flatten_blocks)
  grads = padding.unpad_tree(jax.tree_util.tree_map(np.asarray, inside.grads),
                             own_inside.grads, gr.spec.flatten_blocks)
  for mine, own in ((cut, own_state), (grads, own_inside.grads)):
    for a, b in zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(own)):
      b = np.asarray(b)
      if b.dtype.kind == "f":
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max() + 1e-7)
  # The padding parameters got exactly zero gradient.
  padded_grads = jax.tree_util.tree_leaves(inside.grads)
  total = sum(float(np.abs(np.asarray(g)).sum()) for g in padded_grads)
  own_total = sum(float(np.abs(np.asarray(g)).sum())
                  for g in jax.tree_util.tree_leaves(own_inside.grads))
  np.testing.assert_allclose(total, own_total, rtol=1e-5)
