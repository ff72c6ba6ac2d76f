"""Config fields: their role, the check of a value, and the one-line error a
bad value gets.

Every field is one of three roles:
- static: changes shapes or code (dataset, architecture, norm kind, ...);
  each combination of swept static values is its own compiled group;
- dynamic: a per-model value inside one compiled group (learning rate,
  optimizer and noise hyperparameters); sweeping it never recompiles;
- run: shapes the loop itself (steps, cadences, seeds) and cannot be swept.

A check returns an error phrase, or None when the value is fine.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable

import ml_collections


class ConfigError(ValueError):
  """A config that cannot run; the message names the field and what is allowed."""


def choice(options):
  def check(v):
    return None if v in options else f"must be one of {', '.join(options)}"
  return check


def integer(lo=None, hi=None):
  def check(v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
      return "must be an integer"
    if lo is not None and v < lo:
      return f"must be >= {lo}"
    if hi is not None and v > hi:
      return f"must be <= {hi}"
    return None
  return check


def number(lo=None, hi=None, lo_open=False, hi_open=False):
  def check(v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
      return "must be a number"
    if not math.isfinite(v):
      return "must be finite"
    if lo is not None and (v <= lo if lo_open else v < lo):
      return f"must be {'>' if lo_open else '>='} {lo}"
    if hi is not None and (v >= hi if hi_open else v > hi):
      return f"must be {'<' if hi_open else '<='} {hi}"
    return None
  return check


def positive_int_tuple(v):
  if not isinstance(v, (tuple, list)) or not v:
    return "must be a non-empty tuple of integers"
  if any(isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 1 for u in v):
    return "must hold positive integers"
  return None


def positive_float_tuple(v):
  if not isinstance(v, (tuple, list)) or not v:
    return "must be a non-empty tuple of numbers"
  if any(isinstance(u, bool) or not isinstance(u, numbers.Real) or not math.isfinite(u)
         or u <= 0 for u in v):
    return "must hold finite numbers > 0 (eta = 0 is the base point, always included)"
  if len(set(v)) != len(v):
    return "must not repeat a value"
  return None


def string(v):
  return None if isinstance(v, str) else "must be a string"


def boolean(v):
  return None if isinstance(v, bool) else "must be True or False"


def unit_tuple(v):
  if not isinstance(v, (tuple, list)) or not v:
    return "must be a non-empty tuple of integers"
  if any(isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 0
         for u in v):
    return "must hold non-negative integers"
  if len(set(v)) != len(v):
    return "must not repeat a unit"
  return None


def distinct_tuple(item_check, item_phrase: str, empty_ok: bool = False):
  """A tuple of distinct values, each passing item_check (a predicate)."""
  def check(v):
    if not isinstance(v, (tuple, list)) or (not v and not empty_ok):
      return f"must be a {'' if empty_ok else 'non-empty '}tuple of {item_phrase}"
    if not all(item_check(u) for u in v):
      return f"must hold {item_phrase}"
    if len(set(v)) != len(v):
      return "must not repeat a value"
    return None
  return check


def is_positive_int(u):
  return not isinstance(u, bool) and isinstance(u, numbers.Integral) and u >= 1


def is_severity(u):
  return is_positive_int(u) and u <= 5


def is_prior(u):
  return (not isinstance(u, bool) and isinstance(u, numbers.Real) and math.isfinite(u)
          and u >= 0)


@dataclasses.dataclass(frozen=True)
class Field:
  role: str  # "static" | "dynamic" | "run"
  check: Callable[[Any], str | None]
  doc: str


def _short_repr(value: Any, limit: int = 80) -> str:
  """A one-line repr (messages stay one line whatever the value)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  text = " ".join(repr(value).split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def fail(field: str, value: Any, phrase: str) -> ConfigError:
  return ConfigError(f"config.{field}={_short_repr(value)} {phrase}")


