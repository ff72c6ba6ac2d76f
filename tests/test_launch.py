"""launch/: SkyPilot tasks for TPU VMs, checked offline with SkyPilot's own parser.

No test reaches the network: the module blocks and records every socket
connection and name lookup from before SkyPilot is imported, and asserts at
the end that none was tried. Submission goes through launch.skypilot.submit,
which a recorder replaces.
"""

import hashlib
import importlib.metadata
import itertools
import json
import os
import random
import re
import socket
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from launch import LaunchError
from launch import accelerators
from launch import environment
from launch import prepare_data
from launch import shards
from launch import skypilot
from launch import studies
from launch import tasks
from launch import tpu

BUCKET = "gs://my-bucket/icsjax"
# Run before anything else in a process: every connection or name lookup is
# refused and recorded (a library may catch the refusal; the record stays).
BLOCK_NETWORK = """
import socket
tried = []
def refuse(*args, **kwargs):
  tried.append(args[1:] or args)
  raise OSError("network access in an offline test")
socket.socket.connect = lambda self, *a: refuse(self, *a)
socket.socket.connect_ex = lambda self, *a: refuse(self, *a)
socket.create_connection = lambda *a, **k: refuse(None, *a)
socket.getaddrinfo = lambda *a, **k: refuse(None, *a)
"""


@pytest.fixture(scope="module", autouse=True)
def offline():
  saved = {k: getattr(socket.socket, k) for k in ("connect", "connect_ex")}
  saved_module = {k: getattr(socket, k) for k in ("create_connection", "getaddrinfo")}
  namespace = {}
  exec(BLOCK_NETWORK, namespace)
  try:
    import sky  # noqa: F401  (first imported here, offline)
    yield
  finally:
    for k, v in saved.items():
      setattr(socket.socket, k, v)
    for k, v in saved_module.items():
      setattr(socket, k, v)
  assert namespace["tried"] == [], f"network access: {namespace['tried']}"


@pytest.fixture
def recorder(monkeypatch):
  sent = []

  def record(sky_task, name):
    sent.append((sky_task, name))
    return [len(sent)]

  monkeypatch.setattr(skypilot, "submit", record)
  return sent


def submit(*args):
  return tpu.main(["submit", *args])


def resources_of(sky_task):
  (r,) = sky_task.resources
  return r


# --- tasks as SkyPilot reads them ------------------------------------------------------


def test_every_task_parses_and_is_a_fixed_point():
  """Every generated task is a valid SkyPilot task, and its YAML reads back to
  itself: to-YAML -> from-YAML -> to-YAML changes nothing, in the dict and in
  the text --dry-run prints."""
  jobs = tpu.plan(["configs/default.py", "configs/santurkar_vgg_cifar10.py"], BUCKET,
                  "tpu-v5litepod-16", True, 2, ["width=64"])
  configs = [j.task for j in jobs]
  configs.append(tasks.prepare_data_task(["mnist", "cifar10_corrupted/fog_3"], BUCKET, "8+"))
  for config in configs:
    first = skypilot.as_config(skypilot.task(config))
    text = skypilot.yaml_text(first)
    again = skypilot.as_config(skypilot.task(yaml.safe_load(text)))
    assert again == first
    assert skypilot.yaml_text(again) == text
    for key in ("name", "setup", "run"):  # what we wrote is what SkyPilot keeps
      assert first[key] == config[key]


def test_submit_sends_one_job_per_shard(recorder, capsys):
  """What reaches SkyPilot for the default study in 2 shards on spot TPUs:
  names, resources, env and each shard's run command, this one written out."""
  assert submit("configs/default.py", f"--bucket={BUCKET}/", "--accelerator=tpu-v5litepod-8",
                "--spot", "--shards=2", "--override", "width=64",
                "--override", "sweep.lr=(0.05,0.1)") == 0
  study = studies.study_name("configs/default.py", [("width", "64"), ("sweep.lr", "(0.05,0.1)")])
  names = [name for _, name in recorder]
  assert names == [f"{study}-shard-0-of-2", f"{study}-shard-1-of-2"]
  groups = [g.name for g in studies.load("default", []).study.groups]
  # The six groups cost the same (one architecture, ten models each): they alternate.
  assert groups == ["depth-3_norm-none", "depth-3_norm-batchnorm",
                    "depth-3_norm-noisy_batchnorm", "depth-8_norm-none",
                    "depth-8_norm-batchnorm", "depth-8_norm-noisy_batchnorm"]
  expected_groups = [groups[0::2], groups[1::2]]
  for i, (sky_task, name) in enumerate(recorder):
    assert sky_task.name == name
    r = resources_of(sky_task)
    assert r.accelerators == {"tpu-v5litepod-8": 1}
    assert r.use_spot is True
    assert r.accelerator_args["runtime_version"] == "v2-alpha-tpuv5-lite"
    assert r.job_recovery["recover_on_exit_codes"] == [75]
    assert r.job_recovery["max_restarts_on_errors"] == 0
    assert str(r.cloud).lower() == "gcp"
    workdir = f"{BUCKET}/{study}/shard-{i}-of-2"
    assert sky_task.envs == {"ICSJAX_STUDY": study, "ICSJAX_WORKDIR": workdir,
                             "PYTHONUNBUFFERED": "1"}
    assert sky_task.workdir == ROOT
    assert sky_task.run.splitlines() == [
        'export TFDS_DATA_DIR="$HOME/tensorflow_datasets"',
        "source ~/icsjax-venv/bin/activate",
        f"python -m icsjax.main --config=configs/default.py --workdir={workdir} --noprogress "
        f"--config.width=64 '--config.sweep.lr=(0.05,0.1)' --groups={','.join(expected_groups[i])}"]
    assert "gsutil" not in sky_task.setup  # digits: no TFDS data to copy
  out = capsys.readouterr().out
  assert out.count("submitted ") == 2


def test_on_demand_whole_study_with_tfds_data(recorder):
  """Without --spot and --shards: one job, into the study's folder, no --groups;
  a TFDS study's setup copies its dataset from the bucket to the VM's disk."""
  assert submit("santurkar_vgg_cifar10", f"--bucket={BUCKET}", "--accelerator=tpu-v6e-4") == 0
  ((sky_task, name),) = recorder
  assert name == "santurkar_vgg_cifar10"
  r = resources_of(sky_task)
  assert r.use_spot is False
  assert r.accelerators == {"tpu-v6e-4": 1}
  assert r.accelerator_args["runtime_version"] == "v2-alpha-tpuv6e"
  (command,) = [l for l in sky_task.run.splitlines() if "icsjax.main" in l]
  assert command == ("python -m icsjax.main --config=configs/santurkar_vgg_cifar10.py "
                     f"--workdir={BUCKET}/santurkar_vgg_cifar10 --noprogress")
  copies = [l for l in sky_task.setup.splitlines() if "gsutil" in l]
  assert len(copies) == 1
  assert f"rsync -r {BUCKET}/tfds/cifar10 \"$HOME/tensorflow_datasets/cifar10\"" in copies[0]


def test_setup_pins_this_machines_versions():
  """The constraints pin every installed dependency of the package at its
  installed version, jax included, and the setup installs jax[tpu] at it."""
  text = environment.constraints()
  pins = dict(line.split("==") for line in text.splitlines())
  jax = importlib.metadata.version("jax")
  assert pins["jax"] == jax and pins["jaxlib"] == importlib.metadata.version("jaxlib")
  for requirement in environment.project_dependencies():
    name = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0]
    key = name.lower().replace("_", "-")
    assert pins[key] == importlib.metadata.version(name), name
  # Transitive: flax needs these, which pyproject.toml does not name.
  assert pins["msgpack"] == importlib.metadata.version("msgpack")
  assert pins["treescope"] == importlib.metadata.version("treescope")
  setup = "\n".join(environment.setup_lines(text))
  assert f"'jax[tpu]=={jax}' --find-links {environment.LIBTPU_FIND_LINKS}" in setup
  assert f"--python {sys.version_info.major}.{sys.version_info.minor}" in setup
  assert "skypilot" not in pins  # the launcher is not installed on the VM


# --- names --------------------------------------------------------------------------


def test_study_name_rule():
  name = studies.study_name
  assert name("configs/default.py", []) == "default"
  base = name("configs/default.py", [("width", "64"), ("seeds", "3")])
  assert re.fullmatch(r"default-[0-9a-f]{8}", base)
  assert name("configs/default.py", [("seeds", "3"), ("width", "64")]) == base  # order
  assert name("configs/other.py", [("width", "64"), ("seeds", "3")]) == "other" + base[7:]
  assert name("configs/default.py", [("width", "65"), ("seeds", "3")]) != base
  assert name("configs/default.py:x", []) != "default"
  key = json.dumps(["", [["seeds", "3"], ["width", "64"]]]).encode()
  assert base == "default-" + hashlib.sha256(key).hexdigest()[:8]
  # Through the command line, a field given twice counts once, its last value.
  twice = studies.load("default", [("width", "8"), ("seeds", "3"), ("width", "64")])
  assert twice.name == base and twice.study.config.width == 64


def test_resubmitting_gives_the_same_jobs():
  args = (["configs/default.py"], BUCKET, "tpu-v4-8", True, 3, ["seeds=2"])
  assert [j.task for j in tpu.plan(*args)] == [j.task for j in tpu.plan(*args)]


# --- shards -------------------------------------------------------------------------


def brute_force_makespan(costs, n):
  return min(max(sum(c for c, s in zip(costs, owner) if s == k) for k in range(n))
             for owner in itertools.product(range(n), repeat=len(costs)))


def test_assignment_covers_every_group_once_balanced_and_deterministic():
  rng = random.Random(0)
  for trial in range(60):
    m = rng.randint(1, 7)
    costs = [rng.choice([1.0, 2.0, 3.0, rng.random() * 10]) for _ in range(m)]
    for n in range(1, m + 1):
      split = shards.assign(costs, n)
      assert sorted(i for s in split for i in s) == list(range(m))  # each exactly once
      assert all(split)  # no empty shard
      assert split == shards.assign(list(costs), n)  # deterministic
      loads = [sum(costs[i] for i in s) for s in split]
      assert max(loads) <= sum(costs) / n + max(costs) + 1e-9
      if n <= 3:  # the best split, by trying every one (3**7 at most)
        assert max(loads) <= 4 / 3 * brute_force_makespan(costs, n) + 1e-9  # Graham's bound
  assert shards.assign([5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2) == [[0], [1, 2, 3, 4, 5]]
  with pytest.raises(ValueError):
    shards.assign([1.0], 2)


def test_group_cost_is_models_steps_and_architecture_rate():
  mixed = studies.load("default", [("sweep.depth", "(2,)"), ("seeds", "3"),
                                   ("sweep.norm", "(none,batchnorm)")]).study
  (none, bn) = mixed.groups
  assert shards.group_cost(none, mixed.config.steps) == pytest.approx(
      6 * mixed.config.steps / 48_602)  # 2 learning rates x 3 seeds, the MLP's rate
  vgg = studies.load("santurkar_vgg_cifar10", []).study
  g = vgg.groups[0]
  assert shards.group_cost(g, vgg.config.steps) == pytest.approx(3 * 15_000 / 230)
  # A VGG group outweighs MLP groups: a 2-way split of one VGG and four MLP groups
  # puts the VGG group alone.
  costs = [shards.group_cost(g, 15_000)] + [shards.group_cost(none, 15_000)] * 4
  assert shards.assign(costs, 2) == [[0], [1, 2, 3, 4]]


# --- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("args, says", [
    (["default", "--bucket=s3://b/icsjax", "--accelerator=tpu-v5litepod-8"],
     "--bucket=s3://b/icsjax must be a Google Cloud Storage folder"),
    (["default", "--bucket=gs://", "--accelerator=tpu-v5litepod-8"], "--bucket=gs:// must be"),
    (["default", "--bucket=gs://my bucket", "--accelerator=tpu-v5litepod-8"],
     "--bucket=gs://my bucket must be"),
    (["default", "--bucket=gs://My-Bucket/x", "--accelerator=tpu-v5litepod-8"],
     "--bucket=gs://My-Bucket/x must be"),
    (["default", f"--bucket={BUCKET}", "--accelerator=tpu-v5litepod-3"],
     "--accelerator=tpu-v5litepod-3 is not a known TPU type; known: tpu-v4-{8,16,"),
    (["default", f"--bucket={BUCKET}", "--accelerator=v5litepod-8"], "not a known TPU type"),
    (["default", f"--bucket={BUCKET}", "--accelerator=tpu-v4-8", "--shards=3"],
     "--shards=3 is more than the 2 group(s) of configs/small_dln.py "
     "(norm-none, norm-batchnorm)"),
    (["default", f"--bucket={BUCKET}", "--accelerator=tpu-v4-8", "--shards=0"],
     "--shards=0 must be at least 1"),
    (["nonesuch", f"--bucket={BUCKET}", "--accelerator=tpu-v4-8"],
     "config 'nonesuch' is neither a file nor a shipped config"),
    (["default", f"--bucket={BUCKET}", "--accelerator=tpu-v4-8", "--override=record_every=7"],
     "configs/small_dln.py: config.record_every=7 must be a multiple of scan_length="),
    (["default", f"--bucket={BUCKET}", "--accelerator=tpu-v4-8", "--override=foo=1"],
     "configs/small_dln.py: --override foo is not a field of the config"),
    (["default", f"--bucket={BUCKET}", "--accelerator=tpu-v4-8", "--override=width"],
     "--override 'width' must be FIELD=VALUE"),
    (["default", f"--bucket={BUCKET}", "--accelerator=tpu-v4-8", "--override=width=x"],
     "--override width=x: invalid literal for int()"),
    (["default", "default.py", f"--bucket={BUCKET}", "--accelerator=tpu-v4-8"],
     "study default is given twice"),
    (["default", f"--bucket={BUCKET}"], "the following arguments are required: --accelerator"),
    (["ioffe_mnist", f"--bucket={BUCKET}", "--accelerator=tpu-v4-8",
      "--override=tfds_data_dir=/data"], "config.tfds_data_dir='/data' must be ''"),
])
def test_bad_input_is_refused_in_one_line_before_anything_is_submitted(
    args, says, recorder, capsys):
  # A good study first: a mistake in a later one still submits nothing.
  code = launch_cli(["submit", "small_dln", *args])
  err = capsys.readouterr().err
  assert code == 2
  (line,) = err.strip().splitlines()
  assert line.startswith("error: ") and says in line, line
  assert recorder == []


def launch_cli(argv):
  from launch import cli
  return cli.run(tpu.main, argv)


def test_a_config_outside_the_checkout_is_refused(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text("from configs import default\nget_config = default.get_config\n")
  with pytest.raises(LaunchError, match="is outside the checkout"):
    studies.load(str(path), [])


def test_accelerator_table():
  table = accelerators.table()
  assert {t.generation for t in table.values()} == {"v4", "v5e", "v5p", "v6e"}
  runtime = {"v4": "tpu-ubuntu2204-base", "v5e": "v2-alpha-tpuv5-lite",
             "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
  for name, t in table.items():
    size = int(name.rsplit("-", 1)[1])
    assert t.runtime_version == runtime[t.generation]
    # v4 and v5p count TensorCores, two a chip; every multi-host slice has 4 chips a host.
    assert t.chips == (size // 2 if t.generation in ("v4", "v5p") else size)
    assert t.hosts == (1 if t.chips <= (4 if t.generation in ("v4", "v5p") else 8)
                       else t.chips // 4)
  assert "tpu-v5litepod-8" in table and "tpu-v5p-8" in table


# --- data, fetch ----------------------------------------------------------------------


def test_prepare_data_task(recorder, capsys):
  from launch import cli
  assert cli.run(prepare_data.main, ["mnist", "cifar10_corrupted/fog_3", "mnist",
                                     f"--bucket={BUCKET}"]) == 0
  ((sky_task, name),) = recorder
  assert name == "icsjax-prepare-data"
  r = resources_of(sky_task)
  assert r.accelerators is None and r.use_spot is False
  assert sky_task.run.splitlines()[1:] == [
      'tfds build mnist --file_format=array_record --data_dir="$HOME/tensorflow_datasets"',
      f'gsutil -m -q rsync -r "$HOME/tensorflow_datasets/mnist" {BUCKET}/tfds/mnist',
      'tfds build cifar10_corrupted/fog_3 --file_format=array_record '
      '--data_dir="$HOME/tensorflow_datasets"',
      'gsutil -m -q rsync -r "$HOME/tensorflow_datasets/cifar10_corrupted/fog_3" '
      f'{BUCKET}/tfds/cifar10_corrupted/fog_3']
  assert "tensorflow" in sky_task.setup
  recorder.clear()
  for bad in ("imagenet", "cifar10_corrupted/", "cifar10_corrupted/a/b"):
    assert cli.run(prepare_data.main, [bad, f"--bucket={BUCKET}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: dataset {bad!r} is not one icsjax reads")
  assert recorder == []


def test_fetch_leaves_out_checkpoints_unless_asked():
  command = tpu.fetch_command(BUCKET, "default", "runs/", checkpoints=False)
  assert command[:4] == ["gcloud", "storage", "rsync", "--recursive"]
  assert command[-2:] == [f"{BUCKET}/default", "runs/"]
  (exclude,) = [a for a in command if a.startswith("--exclude=")]
  pattern = exclude.split("=", 1)[1]
  for path in ("checkpoints/400/x", "shard-0-of-2/checkpoints/400/_METADATA"):
    assert re.match(pattern, path)
  for path in ("records/norm-none/bn.npz", "report/report.html", "config.json"):
    assert not re.match(pattern, path)
  assert not any(a.startswith("--exclude") for a in
                 tpu.fetch_command(BUCKET, "default", "runs/", checkpoints=True))
  with pytest.raises(LaunchError, match="must be a study's name"):
    tpu.fetch_command(BUCKET, "default/records", "runs/", checkpoints=False)


# --- the README's dry run -------------------------------------------------------------


README_DRY_RUN = ("python -m launch.tpu submit configs/ioffe_mnist.py configs/santurkar_dln.py "
                  "configs/santurkar_vgg_cifar10.py --bucket=gs://my-bucket/icsjax "
                  "--accelerator=tpu-v5litepod-8 --spot --dry-run")


def test_readme_dry_run():
  """The README's --dry-run command, as typed, in a fresh process with the network
  blocked from its start: YAML tasks separated by ---, each SkyPilot's own, and
  the submissions it would make."""
  readme = open(os.path.join(ROOT, "README.md")).read()
  assert README_DRY_RUN in " ".join(readme.replace("\\\n", " ").split())
  argv = README_DRY_RUN.split()[2:]
  code = (BLOCK_NETWORK + f"import runpy, sys\nsys.argv = {argv!r}\n"
          "try:\n  runpy.run_module('launch.tpu', run_name='__main__')\n"
          "finally:\n  assert not tried, tried\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  documents = out.stdout.split("---\n")
  assert len(documents) == 3
  names = [yaml.safe_load(d)["name"] for d in documents]
  assert names == ["ioffe_mnist", "santurkar_dln", "santurkar_vgg_cifar10"]
  for d in documents:
    config = yaml.safe_load(d)
    assert skypilot.as_config(skypilot.task(config)) == config
  assert "# would submit (dry run: nothing submitted):" in documents[-1]
  assert documents[-1].count("# sky.jobs.launch(task, name=") == 3
