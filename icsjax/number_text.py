"""Numbers written for people: fixed point where it reads well, scientific
notation where fixed point would run to many digits or round to zero.

A diverging model's loss reaches 1e30 and beyond; written ".4f" that is a
35-character integer, and a difference of 2e-6 written ".3f" reads as no
difference at all. `number` keeps the format a table asks for and switches to
scientific notation only in those two cases.
"""

from __future__ import annotations

import math

LARGE = 1e5  # from here on, fixed point is switched to scientific notation


def number(x: float, fmt: str = ".4f", digits: int = 3) -> str:
  """`x` in the format spec `fmt` (e.g. ".4f", "+.3f", ".3g"); a fixed-point `fmt`
  turns to scientific notation with `digits` significant digits where |x| ≥ LARGE or
  where it would show a non-zero x as zero. Non-finite: "inf", "-inf", "nan"."""
  x = float(x)
  if not math.isfinite(x):
    return f"{x:{'+' if '+' in fmt else ''}}"
  shown = f"{x:{fmt}}"
  if fmt.endswith("f") and (abs(x) >= LARGE or (x != 0 and float(shown) == 0)):
    return f"{x:{'+' if '+' in fmt else ''}.{digits - 1}e}"
  return shown
