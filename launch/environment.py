"""What a TPU VM installs: this machine's versions of icsjax's dependencies,
plus JAX's TPU build.

The pins are taken at submit time from the installed distributions
(importlib.metadata): every package pyproject.toml's dependencies (and jax's
``tpu`` extra) need, transitively, at the version installed here. They are a
pip *constraints* file, not requirements: a pin only fixes a version where the
VM installs that package, so a pin for a package this platform alone needs
does no harm; one not installed here is left to the resolver (libtpu, which
``jax[tpu]`` pins to the release matching jax).
"""

from __future__ import annotations

import importlib.metadata
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from launch import studies

# JAX's TPU wheels: libtpu (also on PyPI for recent releases; the index stays
# the documented place, jax's README "Installation").
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
VENV = "~/icsjax-venv"  # on the VM
CONSTRAINTS = "~/icsjax-constraints.txt"
# uv installs this machine's Python on the VM (TPU VM images ship Ubuntu 22.04's
# Python 3.10; icsjax needs 3.11+) and the packages, in one tool.
UV = "uv>=0.5,<1"


def project_dependencies() -> list[str]:
  with open(studies.ROOT / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]["dependencies"]


def pins(roots: list[str]) -> dict[str, str]:
  """{distribution name: installed version} of every installed distribution the
  requirements `roots` need, transitively, extras and markers followed."""
  found, todo = {}, [(Requirement(r), frozenset(Requirement(r).extras)) for r in roots]
  seen = set()
  while todo:
    req, extras = todo.pop()
    name = canonicalize_name(req.name)
    if (name, extras) in seen:
      continue
    seen.add((name, extras))
    try:
      dist = importlib.metadata.distribution(req.name)
    except importlib.metadata.PackageNotFoundError:
      continue
    found[name] = dist.version
    for text in dist.requires or ():
      sub = Requirement(text)
      wanted = sub.marker is None or any(sub.marker.evaluate({"extra": e})
                                         for e in (extras or {""}))
      if wanted:
        todo.append((sub, frozenset(sub.extras)))
  return dict(sorted(found.items()))


def constraints() -> str:
  """The constraints file's text: one ``name==version`` a line."""
  found = pins([*project_dependencies(), "jax[tpu]"])
  return "".join(f"{name}=={version}\n" for name, version in found.items())


def python_version() -> str:
  return f"{sys.version_info.major}.{sys.version_info.minor}"


def setup_lines(constraints_text: str) -> list[str]:
  """Shell lines that install icsjax and JAX's TPU build into VENV, pinned."""
  jax_version = importlib.metadata.version("jax")
  return [
      "set -euo pipefail",
      f"cat > {CONSTRAINTS} <<'ICSJAX_CONSTRAINTS'",
      *constraints_text.splitlines(),
      "ICSJAX_CONSTRAINTS",
      f"python3 -m pip install --user --quiet '{UV}'",
      'export PATH="$HOME/.local/bin:$PATH"',
      f"uv venv --allow-existing --python {python_version()} {VENV}",
      f"uv pip install --python {VENV}/bin/python --constraint {CONSTRAINTS} "
      f". 'jax[tpu]=={jax_version}' --find-links {LIBTPU_FIND_LINKS}",
  ]
