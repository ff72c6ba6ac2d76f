"""Trees of a padded program's shapes (icsjax.programs): a network's tree laid
into the program's larger shapes and cut back, matched leaf by leaf by path."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _by_path(tree) -> dict:
  return {jax.tree_util.keystr(p): leaf
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _blocks_of(key: str, blocks) -> int:
  """How many blocks a leaf's first own axis holds (1: none): a kernel that
  reads a flattened (positions x channels) input holds one row block per position."""
  for layer, count in (blocks or {}).items():
    if f"['{layer}']['kernel']" in key:
      return count
  return 1


def _lay(a, lead: int, shape, count: int, pad: bool):
  """a's trailing axes padded to `shape` (pad) or cut to it; with `count` blocks
  along the first of them, each block padded or cut alike."""
  own = a.shape[lead:]
  if count > 1:
    a = a.reshape(a.shape[:lead] + (count, own[0] // count) + own[1:])
    shape = (count, shape[0] // count) + tuple(shape[1:])
    own = a.shape[lead:]
  if pad:
    widths = [(0, 0)] * lead + [(0, n - m) for n, m in zip(shape, own)]
    a = jnp.pad(a, widths) if any(w for _, w in widths) else a
  else:
    a = a[(slice(None),) * lead + tuple(slice(0, n) for n in shape)]
  if count > 1:
    a = a.reshape(a.shape[:lead] + (-1,) + tuple(shape[2:]))
  return a


def pad_tree(tree, template, fill: float = 0.0, blocks=None):
  """`tree` laid into `template`'s shapes: each leaf in the leading corner of
  zeros (its trailing axes padded at their ends), and `fill` where `tree` has
  no leaf at a template path (a layer this network lacks). Leading axes that
  the template lacks (a model axis) are kept, and given to the filled leaves.
  `blocks` ({layer: count}): kernels whose rows come in `count` blocks, one per
  position of a flattened feature map, padded block by block (a VGG's first
  dense layer, whose input channels are padded at every position)."""
  own = _by_path(tree)
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  lead = next(own[k].shape[:own[k].ndim - len(t.shape)] for k, t in
              ((jax.tree_util.keystr(p), t) for p, t in paths) if k in own)

  def one(path, t):
    key = jax.tree_util.keystr(path)
    a = own.get(key)
    if a is None:
      return jnp.full(lead + tuple(t.shape), fill, t.dtype)
    return _lay(a, len(lead), tuple(t.shape), _blocks_of(key, blocks), pad=True)
  return jax.tree_util.tree_unflatten(treedef, [one(p, t) for p, t in paths])


def unpad_tree(tree, template, blocks=None):
  """The inverse of `pad_tree`: each of `template`'s leaves cut from `tree`'s leaf
  at its path (leading axes the template lacks are kept). Works on NumPy arrays."""
  own = _by_path(tree)
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)

  def one(path, t):
    key = jax.tree_util.keystr(path)
    a = own[key]
    return _lay(a, a.ndim - len(t.shape), tuple(t.shape), _blocks_of(key, blocks), pad=False)
  return jax.tree_util.tree_unflatten(treedef, [one(p, t) for p, t in paths])


def common_part(tree, like):
  """The nested-dict part of `tree` at the keys `like` has (dict leaves: both's)."""
  return {k: common_part(tree[k], v) if isinstance(v, dict) else tree[k]
          for k, v in like.items() if k in tree}


def select_variant(options, index):
  """The tree options[index] (index traced), from trees of equal structure."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs)[index], *options)
