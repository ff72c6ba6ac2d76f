"""Run icsjax studies on Cloud TPU VMs as SkyPilot managed jobs.

  python -m launch.tpu submit CONFIG [CONFIG ...] --bucket=gs://B/icsjax
      --accelerator=tpu-v5litepod-8 [--spot] [--shards=N] [--override FIELD=VALUE ...]
      [--dry-run]
  python -m launch.tpu status [--all]
  python -m launch.tpu logs JOB [--no-follow]
  python -m launch.tpu fetch STUDY DEST --bucket=gs://B/icsjax [--checkpoints]
  python -m launch.tpu cancel JOB

`submit` makes one managed job per study, or per shard of one
(launch/tasks.py), into BUCKET/STUDY (BUCKET/STUDY/shard-I-of-N), STUDY named
by launch/studies.py's rule so that resubmitting resumes. Every config,
override, the bucket, the accelerator and the shard count are checked before
anything is submitted; a mistake ends it with one line and exit code 2.
`--dry-run` prints each job's task as SkyPilot reads it (YAML documents
separated by ---) and the submission, and submits nothing. JOB is a managed
job's id or name (`status` lists them).
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from launch import LaunchError
from launch import accelerators
from launch import cli
from launch import environment
from launch import shards as shards_lib
from launch import skypilot
from launch import studies
from launch import tasks

def plan(configs, bucket: str, accelerator: str, spot: bool, shard_count: int,
         overrides) -> list[tasks.Job]:
  """Every job of a submission, checked whole; LaunchError at the first mistake."""
  bucket = cli.bucket(bucket)
  tpu = accelerators.lookup(accelerator)
  if shard_count < 1:
    raise LaunchError(f"--shards={shard_count} must be at least 1")
  pairs = [studies.parse_override(o) for o in overrides]
  launched = [studies.load(c, pairs) for c in configs]
  names = [l.name for l in launched]
  for l in launched:
    if names.count(l.name) > 1:
      raise LaunchError(f"study {l.name} is given twice (configs {', '.join(configs)})")
    studies.check_local_data_dir(l)
  constraints = environment.constraints()
  jobs = []
  for l in launched:
    split = shards_lib.split(l.study, shard_count, l.config_arg)
    jobs += tasks.study_jobs(l, split, bucket, tpu, spot, constraints)
  return jobs


def submit(args) -> int:
  jobs = plan(args.configs, args.bucket, args.accelerator, args.spot, args.shards,
              args.override or [])
  skypilot.submit_or_show(
      [(j.task, j.name, f"into {j.workdir}, groups: {', '.join(j.groups)}") for j in jobs],
      args.dry_run)
  return 0


def fetch_command(bucket: str, study: str, dest: str, checkpoints: bool) -> list[str]:
  """gcloud's copy of a study folder (every shard of it), checkpoints left out
  unless asked for: they are the bulk, and only a resumed run reads them."""
  if not study or "/" in study.strip("/"):
    raise LaunchError(f"STUDY={study!r} must be a study's name (its folder in the bucket, "
                      f"e.g. default)")
  command = ["gcloud", "storage", "rsync", "--recursive",
             tasks.study_folder(cli.bucket(bucket), study.strip("/")), dest]
  if not checkpoints:
    command.insert(-2, r"--exclude=(.*/)?checkpoints/.*")
  return command


def fetch(args) -> int:
  command = fetch_command(args.bucket, args.study, args.dest, args.checkpoints)
  print(shlex.join(command))
  return subprocess.call(command)


def parser() -> cli.Parser:
  p = cli.Parser(prog="python -m launch.tpu", description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
  s = sub.add_parser("submit", help="submit studies as managed jobs")
  s.add_argument("configs", nargs="+", metavar="CONFIG")
  s.add_argument("--bucket", required=True, help="gs://BUCKET[/FOLDER]: studies and data")
  s.add_argument("--accelerator", required=True, help="a TPU type, e.g. tpu-v5litepod-8")
  s.add_argument("--spot", action="store_true", help="spot VMs (preemptible, cheaper)")
  s.add_argument("--shards", type=int, default=1, help="jobs per study, splitting its groups")
  s.add_argument("--override", action="append", metavar="FIELD=VALUE",
                 help="a config field for every study (icsjax.main's --config.FIELD=VALUE)")
  s.add_argument("--dry-run", action="store_true", help="print the tasks, submit nothing")
  s.set_defaults(handler=submit)
  q = sub.add_parser("status", help="the managed jobs (sky jobs queue)")
  q.add_argument("--all", action="store_true", help="finished jobs too")
  q.set_defaults(handler=lambda a: print(skypilot.job_table(a.all)))
  lg = sub.add_parser("logs", help="a job's output (sky jobs logs)")
  lg.add_argument("job", metavar="JOB")
  lg.add_argument("--no-follow", action="store_true")
  lg.set_defaults(handler=lambda a: skypilot.tail_logs(a.job, follow=not a.no_follow))
  f = sub.add_parser("fetch", help="copy a study's folder from the bucket")
  f.add_argument("study", metavar="STUDY")
  f.add_argument("dest", metavar="DEST")
  f.add_argument("--bucket", required=True)
  f.add_argument("--checkpoints", action="store_true", help="the checkpoints too")
  f.set_defaults(handler=fetch)
  c = sub.add_parser("cancel", help="cancel a job (sky jobs cancel)")
  c.add_argument("job", metavar="JOB")
  c.set_defaults(handler=lambda a: skypilot.cancel(a.job))
  return p


def main(argv) -> int:
  args = parser().parse_args(argv)
  return args.handler(args) or 0


if __name__ == "__main__":
  sys.exit(cli.run(main))
