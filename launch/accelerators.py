"""The TPU accelerator types a job may ask for (tpu_types.csv, with its sources).

SkyPilot accepts any accelerator name offline and checks it only against its
online catalog, at launch: a typo would surface minutes later on the
controller. This list checks it at once.
"""

import csv
import dataclasses
import pathlib

from launch import LaunchError

TABLE = pathlib.Path(__file__).with_name("tpu_types.csv")


@dataclasses.dataclass(frozen=True)
class TpuType:
  accelerator: str  # SkyPilot's name, e.g. tpu-v5litepod-8
  generation: str  # v4, v5e, v5p, v6e
  chips: int
  hosts: int  # more than one: a pod slice, one process per host
  runtime_version: str  # the TPU VM image (GCP's "TPU software version")


def table() -> dict[str, TpuType]:
  lines = [l for l in TABLE.read_text().splitlines() if l and not l.startswith("#")]
  return {r["accelerator"]: TpuType(r["accelerator"], r["generation"], int(r["chips"]),
                                    int(r["hosts"]), r["runtime_version"])
          for r in csv.DictReader(lines)}


def lookup(name: str) -> TpuType:
  """The row of `name`, or LaunchError listing the generations' names."""
  types = table()
  if name in types:
    return types[name]
  sizes = {}
  for t in types:
    prefix, size = t.rsplit("-", 1)
    sizes.setdefault(prefix, []).append(size)
  known = "; ".join(f"{prefix}-{{{','.join(s)}}}" for prefix, s in sizes.items())
  raise LaunchError(f"--accelerator={name} is not a known TPU type; known: {known} "
                    f"(launch/tpu_types.csv)")

