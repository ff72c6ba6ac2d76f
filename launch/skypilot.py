"""The one place that imports SkyPilot: tasks rendered as SkyPilot reads them,
and the calls that reach its API server (submission, queue, logs, cancel).

SkyPilot is imported on first use: it is the optional ``launch`` extra, and
importing it takes seconds. Importing it and rendering tasks make no network
call (tests/test_launch.py checks this with sockets blocked); the jobs calls
do, to the API server SkyPilot starts locally and to the cloud.
"""

from __future__ import annotations

import copy

import yaml

INTERNAL_KEYS = ("_user_specified_yaml",)  # a Task's copy of the YAML it was made from


def task(config: dict):
  """The sky.Task of a task config (SkyPilot's own parsing and validation)."""
  import sky
  return sky.Task.from_yaml_config(copy.deepcopy(config))  # it pops keys of its argument


def as_config(sky_task) -> dict:
  """The task config SkyPilot writes for `sky_task`: what it would submit."""
  config = sky_task.to_yaml_config()
  for key in INTERNAL_KEYS:
    config.pop(key, None)
  return config


class _BlockDumper(yaml.SafeDumper):
  """Multi-line strings (setup, run) as literal blocks, as people write them."""


_BlockDumper.add_representer(
    str, lambda dumper, s: dumper.represent_scalar(
        "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def yaml_text(config: dict) -> str:
  return yaml.dump(config, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


def submit(sky_task, name: str):
  """Submits `sky_task` as a managed job; returns its job ids. Every submission
  of launch/ goes through this function (tests replace it by a recorder)."""
  import sky
  job_ids, _ = sky.stream_and_get(sky.jobs.launch(sky_task, name=name))
  return job_ids


def job_table(all_jobs: bool) -> str:
  import sky
  from sky.client.cli import table_utils  # the table `sky jobs queue` prints
  records = sky.stream_and_get(sky.jobs.queue(refresh=False, skip_finished=not all_jobs))
  return table_utils.format_job_table(records, show_all=False, show_user=False)


def job_selector(job: str) -> dict:
  """sky.jobs keyword arguments naming `job`: an id (digits) or a name."""
  return {"job_id": int(job)} if job.isdigit() else {"name": job}


def tail_logs(job: str, follow: bool) -> int | None:
  import sky
  return sky.jobs.tail_logs(follow=follow, **job_selector(job))


def cancel(job: str):
  import sky
  selector = job_selector(job)
  ids = [selector["job_id"]] if "job_id" in selector else None
  sky.stream_and_get(sky.jobs.cancel(name=selector.get("name"), job_ids=ids))


def submit_or_show(jobs, dry_run: bool) -> None:
  """Each (task config, job name, note) of `jobs` parsed by SkyPilot (all before
  any is submitted), then submitted in order, or, with `dry_run`, printed: the
  tasks as YAML documents separated by ---, then the submissions it would make."""
  sky_tasks = [task(config) for config, _, _ in jobs]
  lines = [f"sky.jobs.launch(task, name={name!r})  # {note}" for _, name, note in jobs]
  if dry_run:
    print("---\n".join(yaml_text(as_config(t)) for t in sky_tasks), end="")
    print("# would submit (dry run: nothing submitted):")
    print("\n".join("# " + line for line in lines))
    return
  for sky_task, (_, name, _), line in zip(sky_tasks, jobs, lines):
    print(line)
    ids = submit(sky_task, name)
    print(f"submitted {name}: managed job {', '.join(map(str, ids or []))}")
