"""Shards: a study's groups run as separate jobs, then joined as one study.

A shard is a run of some of a study's groups (`icsjax.main --groups=A,B`,
`runner.run(..., groups=...)`) into a workdir of its own. Each group trains
exactly as in the whole study: its models keep their global model ids, their
labels, their seeds and their data, and nothing a group computes depends on
the other groups. The shard's grid.json lists its own groups, plus
STUDY_GROUPS, the whole study's group names in order: the subset is part of
what a workdir holds, so rerunning the same shard resumes it, and another
subset (or the whole study) on that workdir is refused.

The shards of one study live side by side in a parent folder, named
`shard-I-of-N` (I from 0 to N-1; launch/ makes them). `members(PARENT)` joins
them: every group from the shard that ran it, in the whole study's order, as
if the study had run whole. A parent whose shards are not one study's split
(another config, a shard missing, two different N, a group in two shards or in
none) is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
import re

from etils import epath

from icsjax import store
from icsjax import study as study_lib
from icsjax import workdir_path
from icsjax.fields import ConfigError

STUDY_GROUPS = "study_groups"  # grid.json of a shard: the whole study's group names
SHARD_RE = re.compile(r"shard-(\d+)-of-(\d+)$")
UNFINISHED_SHARDS = "unfinished_shards"  # attribute of a joined partial study: their folders


class ShardsDisagree(ValueError):
  """A parent folder whose shards are not the split of one study."""


@dataclasses.dataclass(frozen=True)
class Shard(study_lib.Study):
  """Some groups of a study (`groups`), and the whole study's group names in order."""
  study_groups: tuple[str, ...] = ()


def folder_name(index: int, count: int) -> str:
  """The folder of shard `index` (0 to count-1) of `count`, under the study's."""
  return f"shard-{index}-of-{count}"


def subset(study: study_lib.Study, names) -> Shard:
  """The shard of `study` that runs the groups `names` (in study order); ConfigError,
  naming the allowed groups, for an unknown, repeated or missing name."""
  allowed = [g.name for g in study.groups]
  names = list(names)
  unknown = [n for n in names if n not in allowed]
  problem = ("names no group" if not names else
             f"names {', '.join(map(repr, unknown))}, which "
             f"{'is not a group' if len(unknown) == 1 else 'are not groups'} of this study"
             if unknown else
             f"repeats {next(n for n in names if names.count(n) > 1)!r}"
             if len(set(names)) < len(names) else None)
  if problem:
    raise ConfigError(f"--groups={','.join(names)} {problem}; its groups: {', '.join(allowed)}")
  return Shard(study.config, tuple(g for g in study.groups if g.name in names), tuple(allowed))


def grid_fields(study: study_lib.Study) -> dict:
  """What grid.json adds for a shard: the whole study's group names."""
  return {STUDY_GROUPS: list(study.study_groups)} if isinstance(study, Shard) else {}


def _what(names: list[str], study_groups) -> str:
  return ("the whole study" if study_groups is None else
          f"the shard --groups={','.join(names)}")


def check_workdir(workdir, study: study_lib.Study) -> None:
  """Refuses, in one line, a workdir that holds another subset of this study's
  groups (or the whole study where a shard is asked, or the reverse); one that
  holds this same subset resumes. Call it after store.check_workdir."""
  grid_path = workdir_path.path(workdir) / "grid.json"
  if not grid_path.exists():
    return
  grid = store.read_json(grid_path)
  held = [g["name"] for g in grid["groups"]]
  asked = [g.name for g in study.groups]
  if held != asked or (STUDY_GROUPS in grid) != isinstance(study, Shard):
    raise FileExistsError(
        f"--workdir={workdir} holds {_what(held, grid.get(STUDY_GROUPS))} of this study, "
        f"not {_what(asked, grid_fields(study).get(STUDY_GROUPS))}; rerun it as it was run, "
        f"or choose another --workdir")


def shard_folders(path) -> list[epath.Path]:
  """The `shard-I-of-N` folders directly under `path` (none for a workdir)."""
  path = workdir_path.path(path)
  if (path / "grid.json").exists() or not path.is_dir():
    return []
  return sorted((p for p in path.iterdir() if p.is_dir() and SHARD_RE.match(p.name)),
                key=lambda p: tuple(int(x) for x in SHARD_RE.match(p.name).groups()[::-1]))


def is_parent(path) -> bool:
  """Whether `path` is a folder of shards rather than a workdir."""
  return bool(shard_folders(path))


@dataclasses.dataclass(frozen=True)
class Joined:
  """The shards of one study under `parent`, joined."""
  parent: epath.Path
  shards: tuple[epath.Path, ...]  # in index order
  config: dict  # config.json (every shard's, up to store.KEEPING_FIELDS)
  grid: dict  # the whole study's grid.json, as a whole run writes it
  home: dict[str, epath.Path]  # each group's shard workdir


def _first_difference(a: dict, b: dict) -> str:
  field = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
  return f"{field}: {json.dumps(a.get(field))} vs {json.dumps(b.get(field))}"


def join(parent) -> Joined:
  """The shards under `parent` as one study; ShardsDisagree, in one line, when they
  are not one study's split."""
  parent = workdir_path.path(parent)
  folders = shard_folders(parent)
  counts = sorted({int(SHARD_RE.match(p.name).group(2)) for p in folders})
  if len(counts) > 1:
    raise ShardsDisagree(f"{parent} holds shards of {len(counts)} different splits "
                         f"({', '.join(f'of {n}' for n in counts)}): keep the folders of one "
                         f"split (shard-I-of-N, one N) and move the others away")
  count = counts[0]
  names = [p.name for p in folders]
  missing = [folder_name(i, count) for i in range(count) if folder_name(i, count) not in names]
  missing += [p.name for p in folders if not (p / "grid.json").exists()]
  if missing:
    raise ShardsDisagree(f"{parent} lacks the study records of {', '.join(missing)} (of "
                         f"{count} shards, shard-0-of-{count} to shard-{count - 1}-of-{count}): "
                         f"its run has not started yet or its folder was not copied here")
  configs = [store.read_json(p / "config.json") for p in folders]
  grids = [store.read_json(p / "grid.json") for p in folders]
  for p, config, grid in zip(folders, configs, grids):
    if STUDY_GROUPS not in grid:
      raise ShardsDisagree(f"{p} holds a whole study, not a shard (it ran without --groups)")
    identity = [store.study_identity(json.dumps(c)) for c in (config, configs[0])]
    if identity[0] != identity[1]:
      raise ShardsDisagree(f"{p.name} and {folders[0].name} under {parent} ran different "
                           f"configs ({_first_difference(*identity)}): not shards of one study")
    if grid[STUDY_GROUPS] != grids[0][STUDY_GROUPS]:
      raise ShardsDisagree(f"{p.name} and {folders[0].name} under {parent} are shards of "
                           f"studies with different groups: not shards of one study")
  study_groups = grids[0][STUDY_GROUPS]
  home, entries = {}, {}
  for p, grid in zip(folders, grids):
    for g in grid["groups"]:
      if g["name"] in home:
        raise ShardsDisagree(f"group {g['name']} ran in both {home[g['name']].name} and "
                             f"{p.name} under {parent}: not one split of the study")
      home[g["name"]], entries[g["name"]] = p, g
  left = [n for n in study_groups if n not in home]
  if left:
    raise ShardsDisagree(f"group(s) {', '.join(left)} of the study ran in no shard under "
                         f"{parent}: not one split of the study")
  groups = [entries[n] for n in study_groups]
  grid = {"num_models": sum(len(g["model_ids"]) for g in groups), "groups": groups}
  return Joined(parent, tuple(folders), configs[0], grid, home)


def members(path) -> tuple[list[tuple[epath.Path, dict]], dict]:
  """([(workdir, grid.json group entry)] in the study's order, config.json) of a
  workdir or of a parent of shards (`join`). NoRecords, in one line, when no group
  has a finished segment (or `path` holds no study)."""
  path = workdir_path.path(path)
  if not is_parent(path):
    store.started_groups(path)  # no study, or no finished segment: its one-line error
    grid = store.read_json(path / "grid.json")
    return [(path, g) for g in grid["groups"]], store.read_json(path / "config.json")
  joined = join(path)
  out = [(joined.home[g["name"]], g) for g in joined.grid["groups"]]
  if not any(store.segment_paths(w, g["name"]) for w, g in out):
    raise store.NoRecords(f"{path} holds {len(joined.shards)} shards of a study, none with "
                          f"a finished segment yet; rerun (or resubmit) their commands to "
                          f"resume them")
  return out, joined.config
