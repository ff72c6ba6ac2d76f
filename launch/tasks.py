"""SkyPilot task configs (the dicts a task YAML holds), built from plain values.

One managed job per study, or per shard of one. Its workdir is the checkout
(SkyPilot uploads it, leaving out what .gitignore lists); its setup installs
the pinned environment (launch/environment.py) and copies the TFDS data the
job reads from the bucket to the VM's disk (ArrayRecord files read straight
from gs:// are unreliable); its run is ``python -m icsjax.main`` into the
study's bucket folder.

Preemption (verified against SkyPilot 0.14's sky/jobs/recovery_strategy.py
and controller.py): a managed job whose VM is gone is relaunched, on a new VM,
whatever its exit code, and this is not counted as an error. A job that
exits nonzero while its VM is still up is a failed program: relaunched only
``max_restarts_on_errors`` times (default 0), unless its exit code is in
``recover_on_exit_codes``, which relaunches it every time, uncounted. A
preempted icsjax run exits 75 within the notice's grace period, so usually
before its VM is gone: RECOVER_ON listing 75 makes both cases a relaunch, and
the rerun resumes from the workdir's last checkpoint. Other failures (1 a
bug, 2 a refused config or workdir, 3 an unwritable workdir) would repeat:
they are not retried (max_restarts_on_errors 0).
"""

from __future__ import annotations

import dataclasses
import shlex

from icsjax import preemption
from icsjax import shards as icsjax_shards
from icsjax import tfds_data
from launch import accelerators
from launch import environment
from launch import studies

JOB_RECOVERY = {"max_restarts_on_errors": 0, "recover_on_exit_codes": [preemption.EXIT_CODE]}
LOCAL_DATA = "$HOME/tensorflow_datasets"  # on the VM: TFDS's default folder
TFDS_FOLDER = "tfds"  # in the bucket: BUCKET/tfds/<dataset>[/<config>]
# The group subset flag of icsjax.main that a shard's run passes. The contract:
# --groups=NAME,NAME runs exactly the named groups of the study (names as
# icsjax.study.expand gives them), records the subset in the workdir, and the
# shards of one study join into one dataset and report at the study's folder.
GROUPS_FLAG = "--groups"


@dataclasses.dataclass(frozen=True)
class Job:
  name: str  # the managed job's name
  workdir: str  # the study's (or shard's) bucket folder
  groups: tuple[str, ...]  # the groups this job runs
  task: dict  # the SkyPilot task config


def study_folder(bucket: str, study: str) -> str:
  return f"{bucket.rstrip('/')}/{study}"


def shard_suffix(index: int, count: int) -> str:
  """A shard's folder under the study's, and its job name's suffix: self-describing,
  so that resubmitting with another --shards never mixes two splits (icsjax.shards
  joins the folders of one split)."""
  return icsjax_shards.folder_name(index, count)


def copy_data_lines(bucket: str, names: list[str]) -> list[str]:
  lines = [f'mkdir -p "{LOCAL_DATA}"']
  for name in names:
    source = f"{bucket.rstrip('/')}/{TFDS_FOLDER}/{name}"
    lines.append(f'mkdir -p "{LOCAL_DATA}/{name}" && gsutil -m -q rsync -r {source} '
                 f'"{LOCAL_DATA}/{name}" || {{ echo "error: {source} could not be copied; '
                 f'prepare it with python -m launch.prepare_data {name} --bucket={bucket}" >&2; '
                 f'exit 1; }}')
  return lines


def run_command(launched: studies.LaunchedStudy, workdir: str, groups, sharded: bool) -> str:
  argv = ["python", "-m", "icsjax.main", f"--config={launched.config_arg}",
          f"--workdir={workdir}", "--noprogress", *studies.config_flag_args(launched.overrides)]
  if sharded:
    argv.append(f"{GROUPS_FLAG}={','.join(groups)}")
  return shlex.join(argv)


def resources(tpu: accelerators.TpuType, spot: bool) -> dict:
  return {
      "infra": "gcp",
      "accelerators": {tpu.accelerator: 1},
      "accelerator_args": {"runtime_version": tpu.runtime_version, "tpu_vm": True},
      "use_spot": spot,
      "job_recovery": JOB_RECOVERY,
  }


def study_jobs(launched: studies.LaunchedStudy, shards: list[tuple[str, ...]], bucket: str,
               tpu: accelerators.TpuType, spot: bool, constraints: str) -> list[Job]:
  """One job per shard of `launched` (one shard: the whole study, in its own folder)."""
  folder = study_folder(bucket, launched.name)
  jobs = []
  for i, groups in enumerate(shards):
    sharded = len(shards) > 1
    name = f"{launched.name}-{shard_suffix(i, len(shards))}" if sharded else launched.name
    workdir = f"{folder}/{shard_suffix(i, len(shards))}" if sharded else folder
    setup = [*environment.setup_lines(constraints),
             *copy_data_lines(bucket, studies.tfds_names(launched.study, groups))]
    run = [f'export {tfds_data.ENV_DATA_DIR}="{LOCAL_DATA}"',
           f"source {environment.VENV}/bin/activate",
           run_command(launched, workdir, groups, sharded)]
    task = {
        "name": name,
        "workdir": str(studies.ROOT),
        "resources": resources(tpu, spot),
        "num_nodes": 1,  # a pod slice is one node of several hosts; run runs on each
        "envs": {"ICSJAX_STUDY": launched.name, "ICSJAX_WORKDIR": workdir,
                 "PYTHONUNBUFFERED": "1"},
        "setup": "\n".join(setup) + "\n",
        "run": "\n".join(run) + "\n",
    }
    jobs.append(Job(name, workdir, groups, task))
  return jobs


PREPARE_PACKAGES = ("tensorflow", "tensorflow-datasets", "pillow")


def prepare_data_task(names: list[str], bucket: str, cpus: str) -> dict:
  """A CPU job that builds the TFDS datasets `names` as ArrayRecord files and
  copies each to BUCKET/tfds/<name> (building to the local disk first: TFDS's
  downloads and temporary files stay there)."""
  run = ["set -euo pipefail"]
  for name in names:
    run.append(f"tfds build {shlex.quote(name)} --file_format=array_record "
               f'--data_dir="{LOCAL_DATA}"')
    run.append(f'gsutil -m -q rsync -r "{LOCAL_DATA}/{name}" '
               f"{bucket.rstrip('/')}/{TFDS_FOLDER}/{name}")
  return {
      "name": "icsjax-prepare-data",
      "resources": {"infra": "gcp", "cpus": cpus, "use_spot": False},
      "num_nodes": 1,
      "setup": f"pip install --quiet {' '.join(PREPARE_PACKAGES)}\n",
      "run": "\n".join(run) + "\n",
  }
