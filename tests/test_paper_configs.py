"""Every config in configs/ validates as shipped and runs a few steps
(TFDS datasets mocked: the mock returns the same examples for train and test)."""

import importlib
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import ROOT
from icsjax import runner
from icsjax import study

CONFIGS = sorted(p.stem for p in pathlib.Path(ROOT, "configs").glob("*.py")
                 if p.stem != "__init__")


# One config per architecture runs its probes (the same code at any size); the
# others run without them, since the probes' extra gradients and Hessian-vector
# products take a paper-scale VGG minutes to compile here. The 25-layer deep
# linear network runs all but curvature, whose compilation takes 40 s at that
# depth (test_probes checks a deep linear network's curvature against its dense
# Hessian). The default config's probes run elsewhere (tests/test_readme.py all
# but curvature, tests/test_answers.py curvature and ICS).
PROBES = ("ics", "landscape", "curvature")
PROBED = {"small_vgg_digits": PROBES, "small_dln": ("ics", "landscape")}


def shortened(config, probes=PROBES):
  """Same layer structure; two steps, one seed, the first swept value of each
  field (the first norm variant, `none` in every config: the variants share
  all code but the norm, which tests/test_train.py and tests/test_probes.py
  check for every kind; the other depths and widths compile the same code at
  another size; sweeping a dynamic field never changes the compiled code), and
  conv stages at most 8 channels wide: a paper-size VGG step takes minutes on
  a 2-core CPU (its full size is validated, and timed on a GPU by
  benchmarks/study_rate.py)."""
  c = config
  c.channels = tuple(min(ch, 8) for ch in c.channels)
  if c.arch == "vgg":
    c.width = min(c.width, 16)
  c.steps = c.segment_steps = c.record_every = c.eval_every = c.scan_length = 2
  for probe in PROBES:  # every probe that is on and in `probes`, at step 2
    if c[f"{probe}_every"]:
      c[f"{probe}_every"] = 2 if probe in probes else 0
  if c.test_time_every:  # test-time evaluation, at step 2 too
    c.test_time_every = 2
  c.curvature_batch_size = min(c.curvature_batch_size, 16)
  c.lanczos_steps, c.slq_vectors, c.hutchinson_samples = 3, 1, 2
  c.seeds = 1
  c.monitor_size = 16
  for name in list(c.sweep):
    c.sweep[name] = c.sweep[name][:1]
  return c


@pytest.mark.parametrize("name", CONFIGS)
def test_config_docstring_gives_command_and_runtime(name):
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert doc and f"--config=configs/{name}.py" in doc
  assert "Runtime:" in doc and "RUNTIME_NOTE" not in doc


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_runs(name, tmp_path):
  module = importlib.import_module(f"configs.{name}")
  full = study.expand(module.get_config())  # the config as shipped
  c = shortened(module.get_config(), probes=PROBED.get(name, ()))
  with tfds.testing.mock_data(num_examples=256, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None)
  assert full.groups[0].name == list(ds)[0] and len(ds) == 1
  for g in ds.values():
    assert g.sizes["step"] == 2 and (g.diverged_step == 0).all()
    assert float(g.train_loss.isel(step=0).min()) > 0
    for probe, var in (("ics", "ics_grad_cosine"), ("landscape", "landscape_loss"),
                       ("curvature", "hessian_lambda_max")):
      assert (var in g) == (probe in PROBED.get(name, ())), var
      if var in g:
        assert np.isfinite(g[var]).all(), var
