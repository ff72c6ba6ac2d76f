"""The model axis sharded over several (virtual CPU) devices."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT
from icsjax import placement
from icsjax import runner

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from icsjax import devices
    print(devices.split_cpu_host(4))
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    from icsjax import placement
    from icsjax import runner
    from icsjax import study
    from test_devices import five_models
    print("devices", jax.device_count(), placement.model_sharding(5).mesh.size)
    # Accelerators' policy on virtual CPU devices (a CPU keeps every program on
    # every device: placement.device_blocks): each program on 2 devices of its own.
    placement.BLOCK_BACKENDS += ("cpu",)
    runner.run(five_models(), {workdir!r}, progress=False)
    for gr in runner.build_group_runs(study.expand(five_models())):
      print("program", gr.program.name, sorted(d.id for d in gr.state.diverged_step.devices()))
""")


def five_models():
  """Two programs (no norm, BN) of 5 models: on 4 devices, each on a block of 2
  devices (3 models on one, 2 and a padding model on the other), run at once,
  curvature probed: the probe that runs one model per device, on its block.
  (Batch norm, not noisy: noisy BN's draws inside the probe's Lanczos loops
  triple its compile time here, and its per-model noise keys are checked
  against the model trained alone in tests/test_train.py.)"""
  from conftest import tiny_config
  c = tiny_config(curvature_every=20, curvature_batch_size=16, lanczos_steps=6, slq_vectors=1,
                  hutchinson_samples=2)
  c.sweep.norm = ("none", "batchnorm")
  c.seeds, c.sweep.lr = 5, (0.1,)
  return c


def run_python(code, **env):
  full_env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  full_env.update(env)
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=full_env)


@pytest.mark.slow
def test_four_virtual_devices_match_one(tmp_path):
  tests = os.path.join(ROOT, "tests")
  out = run_python(SCRIPT.format(tests=tests, workdir=str(tmp_path / "four")))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "CPU split into 4 devices" in out.stdout and "devices 4 3" in out.stdout
  # Programs on disjoint blocks of devices, queued together, write what they
  # write one after another on one device.
  assert "program norm-none [0, 1]" in out.stdout, out.stdout
  assert "program norm-batchnorm [2, 3]" in out.stdout, out.stdout
  one = runner.run(five_models(), tmp_path / "one", progress=False, log=lambda *_: None)
  four = runner.store.load(tmp_path / "four")
  assert list(one) == list(four)
  for group in one:
    assert four[group].sizes["model"] == 5  # the padding model dropped
    np.testing.assert_array_equal(four[group].model, one[group].model)
    for name in one[group].data_vars:
      if one[group][name].dtype.kind == "U":  # the failure reasons
        np.testing.assert_array_equal(four[group][name].values, one[group][name].values)
        continue
      np.testing.assert_allclose(four[group][name].values, one[group][name].values,
                                 rtol=1e-5, atol=1e-6, err_msg=f"{group}/{name}")


def test_split_respects_user_flags_and_a_started_jax():
  kept = run_python("from icsjax import devices; print(devices.split_cpu_host(4));"
                    "import jax; print(jax.device_count())",
                    XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert kept.returncode == 0, kept.stderr[-2000:]
  assert "kept it" in kept.stdout and kept.stdout.split()[-1] == "2"
  late = run_python("import jax; jax.devices(); from icsjax import devices;"
                    "print(devices.split_cpu_host(4)); print(jax.device_count())")
  assert late.returncode == 0, late.stderr[-2000:]
  assert "no effect" in late.stdout and late.stdout.split()[-1] == "1"


def test_device_blocks_put_programs_side_by_side_on_accelerators_only():
  assert placement.device_blocks(2, "gpu", 4) == [(0, 2), (2, 2)]
  assert placement.device_blocks(3, "gpu", 8) == [(0, 2), (2, 2), (4, 2)]
  assert placement.device_blocks(6, "tpu", 4) == [(0, 1), (1, 1), (2, 1), (3, 1), (0, 1),
                                                  (1, 1)]
  assert placement.device_blocks(1, "gpu", 8) == [(0, 8)]
  assert placement.device_blocks(3, "gpu", 1) == [(0, 1)] * 3
  assert placement.device_blocks(2, "gpu", 8, processes=2) == [(0, 8)] * 2
  assert placement.device_blocks(2, "cpu", 4) == [(0, 4)] * 2


def test_devices_for_prefers_fewest_models_per_device_then_least_padding():
  assert placement.devices_for(1, 8) == 1
  assert placement.devices_for(10, 4) == 4    # 3 per device beats 5
  assert placement.devices_for(9, 4) == 3     # 3 + 3 + 3, not 3 + 3 + 3 + 3 padded
  assert placement.devices_for(10, 2) == 2
  assert placement.devices_for(5, 4) == 3     # 2 + 2 + 1, one padding model
  assert placement.devices_for(128, 2) == 2
  assert placement.devices_for(128, 16) == 16
  assert placement.devices_for(7, 16) == 7
  for k in range(1, 40):
    for n in range(1, 10):
      d = placement.devices_for(k, n)
      assert 1 <= d <= min(k, n)
      # no device count does better on the first criterion
      assert -(-k // d) == min(-(-k // e) for e in range(1, min(k, n) + 1))


def test_cpu_devices_zero_splits_one_device_per_core():
  out = run_python("from icsjax import devices; print(devices.split_cpu_host(devices.requested(0)));"
                   "import jax; print(jax.device_count(), devices.auto_cpu_devices())")
  assert out.returncode == 0, out.stderr[-2000:]
  count, cores = out.stdout.split()[-2:]
  assert count == cores == str(len(os.sched_getaffinity(0)))
