"""Strict checks of numeric arguments, with one message format naming the bad value.

``True`` is not an integer here and ``1.0`` is not an integer either: a config that
says ``max_iter: true`` or ``n_probes: 2.5`` is a mistake to report, not to coerce.
"""
from __future__ import annotations

import math
from numbers import Real


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an ``int`` (not a ``bool``) ≥ ``minimum``; else raise
    ``ValueError("<name> must be an integer >= <minimum>, got <value>")``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def as_list(value: object) -> list | None:
    """The items of a list-like config value (a list, a tuple, an OmegaConf ``ListConfig``) as a
    list, or ``None`` for a string, bytes or anything that is not iterable, so that ``"0,1"``
    is reported as a mistake rather than read as its characters."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return None
    return list(value)


def is_finite_real(value: object) -> bool:
    """Whether ``value`` is a finite real number: an ``int`` or ``float`` (or other
    :class:`numbers.Real`), not a ``bool``, not NaN or infinite."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def check_real(name: str, value: object, *, low: float, high: float = math.inf,
               low_inclusive: bool = False, high_inclusive: bool = True) -> float:
    """Return ``float(value)`` if it is a finite real number (not a ``bool``) in the interval;
    else raise ``ValueError("<name> must be a real number in (low, high], got <value>")``, or,
    with no upper bound, ``ValueError("<name> must be a finite real number > low, got <value>")``
    (infinity is never accepted, so the message does not offer it)."""
    ok = is_finite_real(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v >= low if low_inclusive else v > low) and (v <= high if high_inclusive else v < high)
    if not ok:
        if math.isinf(high):
            bound = f"{'>=' if low_inclusive else '>'} {low}"
            raise ValueError(f"{name} must be a finite real number {bound}, got {value!r}")
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be a real number in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)  # type: ignore[arg-type]
