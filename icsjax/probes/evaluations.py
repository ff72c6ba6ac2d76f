"""How a probe runs its independent evaluations (learning-rate multiples,
layers, SLQ vectors, Hutchinson samples)."""

from __future__ import annotations

import jax


def each(fn, xs, in_sequence: bool):
  """fn over the leading axis of xs: in sequence (lax.map), so that one
  evaluation's work arrays stay in a CPU's cache, or at once (vmap), so that
  an accelerator launches one batched kernel rather than a loop iteration of
  small ones per evaluation (benchmarks/README.md, "Probe cost")."""
  return jax.lax.map(fn, xs) if in_sequence else jax.vmap(fn)(xs)
