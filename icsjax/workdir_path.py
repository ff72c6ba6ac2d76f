"""A workdir's paths, local or in a bucket, as one type: ``etils.epath.Path``.

``--workdir=runs/x`` is a local directory; ``--workdir=gs://BUCKET/x`` is a
prefix in a Cloud Storage bucket, read and written through gcsfs (the
``gs://`` paths of epath, which orbax uses too). Code that touches the
workdir goes through `path`, and asks `in_bucket` only where an object store
differs from a filesystem: no atomic rename (icsjax.store), no flock
(icsjax.workdir_lock), no free-space figure (icsjax.write_errors).

gcsfs caches directory listings; the checkpoints are written by tensorstore
behind its back, and another process may hold the lock, so the cache would
show a stale bucket. It is switched off before the first bucket path is used.

Imports no JAX: ``icsjax.main`` takes the workdir's lock before JAX starts.
"""

from __future__ import annotations

import os

from etils import epath

# fsspec's protocol names for Cloud Storage (gcsfs registers both).
_GCS_PROTOCOLS = ("gs", "gcs")
_listings_uncached = False


def in_bucket(p) -> bool:
  """Whether `p` names an object-store location (gs://...) rather than a local path."""
  return "://" in os.fspath(p)


def path(p) -> epath.Path:
  """`p` (str, pathlib or epath) as an epath.Path."""
  if in_bucket(p):
    _uncache_listings()
  return epath.Path(p)


def absolute(p) -> epath.Path:
  """`p` made absolute; a bucket path already is (epath would prefix the cwd)."""
  p = path(p)
  return p if in_bucket(p) else p.absolute()


def _uncache_listings() -> None:
  global _listings_uncached
  if _listings_uncached:
    return
  import fsspec
  for protocol in _GCS_PROTOCOLS:
    fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False
  _listings_uncached = True


def filesystem(p):
  """(fsspec filesystem, its path) of a bucket path: for what epath does not
  offer (an object created only if absent)."""
  import fsspec
  return fsspec.core.url_to_fs(os.fspath(path(p)))
