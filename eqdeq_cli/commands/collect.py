"""``eqdeq collect DIR``: tabulate a sweep directory (see :mod:`eqdeq_cli.sweeps.table`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..sweeps.table import collect


def _split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eqdeq collect",
        description="Tabulate a sweep directory: mean ± std over seeds of every metric, "
        "grouped by the swept overrides; writes PREFIX.csv, PREFIX.md and PREFIX_jobs.csv.",
    )
    parser.add_argument("sweep_dir", metavar="DIR", help="the sweep directory (hydra.sweep.dir)")
    parser.add_argument("--out", metavar="PREFIX", help="output prefix (default: DIR/results)")
    parser.add_argument("--metrics", type=_split_list, help="comma-separated metrics (default: all)")
    parser.add_argument(
        "--group-by", type=_split_list,
        help="comma-separated keys (default: the swept keys except the seed, then any setting that differs "
        "between jobs with the same overrides)"
    )
    parser.add_argument("--seed-key", default="seed", help="the override averaged over (default: seed)")
    parser.add_argument("--quiet", action="store_true", help="do not print the Markdown table")
    parser.add_argument("--figure", action="store_true",
                        help="also write PREFIX_comparison.md (methods vs the A†y baseline) and PREFIX_figure.png "
                        "(ground truth, A†y and each method's reconstruction, one seed per method)")
    parser.add_argument("--n-images", type=int, default=4, help="test images in the figure (default: 4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``eqdeq collect``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        table = collect(args.sweep_dir, metrics=args.metrics, group_by=args.group_by, seed_key=args.seed_key)
    except (FileNotFoundError, KeyError, NotADirectoryError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"eqdeq collect: error: {message}", file=sys.stderr)
        return 1
    prefix = Path(args.out) if args.out else Path(args.sweep_dir) / "results"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = (Path(f"{prefix}.csv"), Path(f"{prefix}.md"), Path(f"{prefix}_jobs.csv"))
    table.write_csv(paths[0])
    markdown = table.to_markdown()
    paths[1].write_text(markdown)
    table.write_jobs_csv(paths[2])
    if args.figure:
        from ..sweeps.compare import comparison_figure, comparison_markdown

        comparison = comparison_markdown(table)
        paths += (Path(f"{prefix}_comparison.md"), Path(f"{prefix}_figure.png"))
        paths[3].write_text(comparison)
        try:
            comparison_figure(table, paths[4], n_images=args.n_images, seed_key=args.seed_key)
        except (FileNotFoundError, KeyError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"eqdeq collect: error: {message}", file=sys.stderr)
            return 1
        markdown = comparison
    if not args.quiet:
        sys.stdout.write(markdown)
    sys.stderr.write(
        f"{len(table.jobs)} jobs ({len(table.failed)} failed"
        + (f", {len(table.time_capped)} stopped at the time cap" if table.time_capped else "")
        + ") -> " + ", ".join(map(str, paths)) + "\n"
    )
    if table.config_keys:
        sys.stderr.write(f"rows also split by settings that differ between jobs with the same overrides: "
                         f"{', '.join(table.config_keys)}\n")
    if table.mixed_keys:
        sys.stderr.write(f"jobs in one row differ in settings not grouped by: {', '.join(table.mixed_keys)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
