"""Build TFDS datasets as ArrayRecord files into a bucket, once, on a CPU VM.

  python -m launch.prepare_data mnist fashion_mnist cifar10 --bucket=gs://B/icsjax
      [--cpus=8+] [--dry-run]

One SkyPilot managed job (not a TPU: building needs TensorFlow, which icsjax
never installs, and the internet) runs ``tfds build NAME
--file_format=array_record`` for each name and copies the result to
BUCKET/tfds/NAME, where every job of ``python -m launch.tpu submit`` copies
it from. NAME is one of icsjax's TFDS datasets, or a CIFAR-10-C set,
``cifar10_corrupted/CORRUPTION_SEVERITY`` (e.g. ``cifar10_corrupted/fog_3``).
"""

from __future__ import annotations

import sys

from icsjax import tfds_data
from launch import LaunchError
from launch import cli
from launch import skypilot
from launch import tasks

def check_name(name: str) -> str:
  corrupted = {f"{v}/" for v in tfds_data.CORRUPTED_DATASETS.values()}
  if name in tfds_data.TFDS_DATASETS or any(
      name.startswith(p) and len(name) > len(p) and "/" not in name[len(p):]
      for p in corrupted):
    return name
  raise LaunchError(f"dataset {name!r} is not one icsjax reads; expected one of "
                    f"{', '.join(tfds_data.TFDS_DATASETS)}, or "
                    f"{'/CORRUPTION_SEVERITY, '.join(sorted(corrupted))}CORRUPTION_SEVERITY "
                    f"(e.g. cifar10_corrupted/fog_3)")


def parser() -> cli.Parser:
  p = cli.Parser(prog="python -m launch.prepare_data", description=__doc__.split("\n\n")[0])
  p.add_argument("names", nargs="+", metavar="NAME")
  p.add_argument("--bucket", required=True, help="gs://BUCKET[/FOLDER], as for launch.tpu")
  p.add_argument("--cpus", default="8+", help="the VM's vCPUs, as SkyPilot reads them")
  p.add_argument("--dry-run", action="store_true", help="print the task, submit nothing")
  return p


def main(argv) -> int:
  args = parser().parse_args(argv)
  names = [check_name(n) for n in dict.fromkeys(args.names)]
  task = tasks.prepare_data_task(names, cli.bucket(args.bucket), args.cpus)
  skypilot.submit_or_show([(task, task["name"], f"builds {', '.join(names)}")], args.dry_run)
  return 0


if __name__ == "__main__":
  sys.exit(cli.run(main))
