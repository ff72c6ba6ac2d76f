"""Splitting a study's groups over N jobs, balancing their estimated cost.

A group's cost is models x steps x the seconds per model-step of its
architecture (SECONDS_PER_MODEL_STEP). The split is greedy longest-first
(Graham 1969, "LPT"): groups in decreasing cost, ties in study order, each to
the shard with the least cost so far, ties to the lowest shard. It is
deterministic, puts every group in exactly one shard, leaves no shard empty
when there are at least N groups (the first N go to N different shards), and
no shard's cost exceeds the mean shard cost plus the costliest group's (the
shard that received a group last had the least cost then, at most the mean),
which is within 4/3 of the best split's largest shard.
"""

from __future__ import annotations

from icsjax import study as study_lib
from launch import LaunchError

# Seconds per model-step on one H100 (benchmarks/study_rate.py, the paper configs'
# docstrings, with batch norm, the slower variant): configs/ioffe_mnist.py 48,602
# model-steps/s, configs/santurkar_dln.py 24,001, configs/santurkar_vgg_cifar10.py 230.
# Only their ratios matter here; a TPU's rates differ, their ratios less.
SECONDS_PER_MODEL_STEP = {"mlp": 1 / 48_602, "dln": 1 / 24_001, "vgg": 1 / 230}


def group_cost(group: study_lib.Group, steps: int) -> float:
  return group.size * steps * SECONDS_PER_MODEL_STEP[group.static["arch"]]


def assign(costs: list[float], n: int) -> list[list[int]]:
  """Indices of `costs` in each of `n` shards (each list in increasing order)."""
  if not 1 <= n <= len(costs):
    raise ValueError(f"{n} shards of {len(costs)} items")
  shards, loads = [[] for _ in range(n)], [0.0] * n
  for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
    lightest = min(range(n), key=lambda s: (loads[s], s))
    shards[lightest].append(i)
    loads[lightest] += costs[i]
  return [sorted(s) for s in shards]


def split(study: study_lib.Study, n: int, label: str) -> list[tuple[str, ...]]:
  """The group names of each of `n` shards of `study`, in study order;
  LaunchError (naming `label`) when it has fewer groups than shards."""
  groups = study.groups
  if n > len(groups):
    raise LaunchError(f"--shards={n} is more than the {len(groups)} group(s) of {label} "
                      f"({', '.join(g.name for g in groups)}); a shard runs whole groups")
  if n > 1:
    for g in groups:
      if "," in g.name:
        raise LaunchError(f"--shards={n}: group {g.name!r} of {label} has a comma in its "
                          f"name, which --groups=NAME,NAME cannot pass; run it unsharded")
  costs = [group_cost(g, study.config.steps) for g in groups]
  return [tuple(groups[i].name for i in shard) for shard in assign(costs, n)]
