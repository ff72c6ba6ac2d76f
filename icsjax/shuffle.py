"""Which example each position of an epoch reads: a keyed permutation of
0..n-1 evaluated one position at a time, so a segment pays for the positions
it reads (steps x batch), not for sorting the whole training set for every
epoch it touches.

The permutation is a swap-or-not shuffle (Hoang, Morris & Rogaway, 2012). Each
round pairs every index x with its reflection p - x (mod n) about a random
pivot p and swaps the pair when a keyed coin, tossed for the pair, says so.
Each round is an involution, so the whole is a bijection for any n, with no
rejection. Rounds: 6 log2(n), the order the analysis asks for the shuffle to
be close to a uniform permutation of the whole domain;
tests/test_train.py checks positions and adjacent pairs for uniformity.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def rounds(n: int) -> int:
  return 6 * max(1, math.ceil(math.log2(n)))


def round_keys(key, epochs, n: int):
  """(pivots, salts), each (len(epochs), rounds(n)): epoch e's from fold_in(key, e)."""
  def one(e):
    pivot_key, salt_key = jax.random.split(jax.random.fold_in(key, e))
    return (jax.random.randint(pivot_key, (rounds(n),), 0, n, jnp.int32).astype(jnp.uint32),
            jax.random.bits(salt_key, (rounds(n),), jnp.uint32))
  return jax.vmap(one)(epochs)


def mix32(x):
  """MurmurHash3's 32-bit finaliser: every input bit moves every output bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def permute(index, epoch, pivots, salts, n: int):
  """The example at position `index` (in [0, n)) of epoch row `epoch` of
  (pivots, salts); `index` and `epoch` broadcast together."""
  n32 = jnp.uint32(n)

  def round_(r, x):
    partner = (pivots[epoch, r] + n32 - x) % n32
    pair = jnp.maximum(x, partner)  # the pair's name: the same coin for both
    swap = (mix32(pair ^ salts[epoch, r]) >> 31) == 1
    return jnp.where(swap, partner, x)

  x = jax.lax.fori_loop(0, rounds(n), round_, jnp.asarray(index).astype(jnp.uint32))
  return x.astype(jnp.int32)
