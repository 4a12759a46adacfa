"""Write the lines of a sweep file for array_sweep.sbatch: the product of swept overrides.

    python scripts/slurm/make_sweep_file.py grad=implicit,jfb seed=0,1,2 > sweep.txt

gives six lines, ``grad=implicit seed=0`` … ``grad=jfb seed=2``, in the order Hydra's basic
sweeper would run them. Commas inside brackets or quotes do not split (``model.k=[1,2]``).
"""
from __future__ import annotations

import itertools
import sys


def split_values(text: str) -> list[str]:
    """``"a,[1,2],'x,y'"`` → ``["a", "[1,2]", "'x,y'"]``: split on top-level commas."""
    parts: list[str] = []
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def sweep_lines(args: list[str]) -> list[str]:
    """One line per combination of the comma-separated values of ``key=v1,v2,...``."""
    axes = []
    for arg in args:
        key, sep, values = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value[,value...], got {arg!r}")
        axes.append([f"{key}={v}" for v in split_values(values)])
    return [" ".join(combo) for combo in itertools.product(*axes)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stderr.write(__doc__ or "")
        return 2
    try:
        lines = sweep_lines(args)
    except ValueError as exc:
        sys.stderr.write(f"make_sweep_file: {exc}\n")
        return 2
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
