"""Trees of a padded program's shapes (icsjax.programs): a network's tree laid
into the program's larger shapes and cut back, matched leaf by leaf by path."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _by_path(tree) -> dict:
  return {jax.tree_util.keystr(p): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def pad_tree(tree, template, fill: float = 0.0):
  """`tree` laid into `template`'s shapes: each leaf in the leading corner of
  zeros (its trailing axes padded at their ends), and `fill` where `tree` has
  no leaf at a template path (a layer this network lacks). Leading axes that
  the template lacks (a model axis) are kept, and given to the filled leaves."""
  own = _by_path(tree)
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  lead = next(own[k].shape[:own[k].ndim - len(t.shape)] for k, t in
              ((jax.tree_util.keystr(p), t) for p, t in paths) if k in own)

  def one(path, t):
    a = own.get(jax.tree_util.keystr(path))
    if a is None:
      return jnp.full(lead + tuple(t.shape), fill, t.dtype)
    widths = [(0, 0)] * len(lead) + [(0, n - m) for n, m in zip(t.shape, a.shape[len(lead):])]
    return jnp.pad(a, widths) if any(w for _, w in widths) else a
  return jax.tree_util.tree_unflatten(treedef, [one(p, t) for p, t in paths])


def unpad_tree(tree, template):
  """The inverse of `pad_tree`: each of `template`'s leaves cut from `tree`'s leaf
  at its path (leading axes the template lacks are kept). Works on NumPy arrays."""
  own = _by_path(tree)
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)

  def one(path, t):
    a = own[jax.tree_util.keystr(path)]
    lead = a.ndim - len(t.shape)
    return a[(slice(None),) * lead + tuple(slice(0, n) for n in t.shape)]
  return jax.tree_util.tree_unflatten(treedef, [one(p, t) for p, t in paths])


def common_part(tree, like):
  """The nested-dict part of `tree` at the keys `like` has (dict leaves: both's)."""
  return {k: common_part(tree[k], v) if isinstance(v, dict) else tree[k]
          for k, v in like.items() if k in tree}


def select_variant(options, index):
  """The tree options[index] (index traced), from trees of equal structure."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs)[index], *options)
