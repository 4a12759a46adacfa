#!/usr/bin/env python
"""Map evaluations per training step, training time and final quality of solver settings,
run side by side.

Each setting is a list of ``eqdeq train`` overrides; every setting trains in its own
process, all at once (so load from other jobs hits them alike), with one torch thread
each. A process counts, over all training-mode DEQ calls, the forward solver's map
evaluations (its iterations plus the one tracked step of a call) and the backward solver's
vector–Jacobian products, and reads the run's ``metrics.json``. The report gives per
setting: evaluations per training step (forward, backward, total), the ratio of today's
default to it, the training time and its ratio, and the final test PSNR, SSIM and share of
converged test samples.

Settings (``--settings``, default: all). The shipped default starts each training sample's
solve from its last fixed point (``grad.sample_cache=1024``), stops the backward solve after 5
iterations and lets the training tolerance fall from 10x the solver's (``trainer.forward_tol_start=auto``);
the other settings name every one of those keys, so each keeps its meaning whatever the default:

* ``default``: the shipped configuration;
* ``former``: the default before those three (no cache, 10 backward iterations, the solver's
  tolerance from the first step);
* ``cache``: ``former`` with ``grad.sample_cache=1024`` (4 x the default ``data.n_train``);
* ``cache+bwd5``: the cache with a backward solve of at most 5 iterations;
* ``cache+bwd5+tol``: ``cache+bwd5`` with a training tolerance that falls from 1e-3 at step 0
  to the solver's 1e-4 over the first half of the run: the default, spelled out;
* ``tolramp``: ``former`` with a tolerance falling from 1e-2 over the first half;
* ``cache+warm``: ``cache`` with ``grad.warm_start=true`` (the EI loss's second call starts
  from the first call's solution);
* ``tol1e-3``: ``former`` with the training solve stopping at a relative residual of 1e-3
  instead of 1e-4 (same 60-iteration cap, so the network still trains at its fixed point);
* ``tol1e-3+cache``: both.
* ``jac1e-4``, ``jac1e-3``: ``former`` with Jacobian regularisation (``regularizer=jacobian``) of
  that weight.
* ``bilinear``: ``former`` with continuous rotations resampled bilinearly (``group.exact=false``),
  the EI group before quarter turns became the default.
* ``plain``: ``former`` with neither the map nor the MC loss ramp-preconditioned (both are on CT
  by default): the solver settings and map before ramp preconditioning; ``ramp-map``: the map only.

``--base NAME`` (default ``default``) is the setting the "fewer" and "faster" ratios divide.
``--reach REF`` adds time to quality: with validation during training (``-- trainer.eval_every=25``),
for each setting the training time (``time_s`` of ``metrics.csv``) at which its validation PSNR first
reaches the final validation PSNR of setting REF, and that time as a share of REF's training time.

Extra overrides for every setting follow ``--`` (e.g. ``-- trainer.max_steps=100``).

Example: ``python scripts/bench_iterations.py --out /tmp/bench_it``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: The solver settings before the sample cache, the 5-iteration backward solve and the falling
#: training tolerance became the default.
FORMER = ["grad.sample_cache=0", "solver.backward.max_iter=10", "trainer.forward_tol_start=null"]
CACHE = ["grad.sample_cache=1024", "solver.backward.max_iter=10", "trainer.forward_tol_start=null"]

SETTINGS = {
    "default": [],
    "former": FORMER,
    "cache": CACHE,
    "cache+bwd5": ["grad.sample_cache=1024", "solver.backward.max_iter=5", "trainer.forward_tol_start=null"],
    "cache+warm": [*CACHE, "grad.warm_start=true"],
    "cache+bwd5+tol": ["grad.sample_cache=1024", "solver.backward.max_iter=5", "trainer.forward_tol_start=1e-3"],
    "tolramp": ["grad.sample_cache=0", "solver.backward.max_iter=10", "trainer.forward_tol_start=1e-2"],
    "tol1e-3": [*FORMER, "solver.forward.tol=1e-3"],
    "tol1e-3+cache": [*CACHE, "solver.forward.tol=1e-3"],
    "jac1e-4": [*FORMER, "regularizer=jacobian", "regularizer.weight=1e-4"],
    "jac1e-3": [*FORMER, "regularizer=jacobian", "regularizer.weight=1e-3"],
    "bilinear": [*FORMER, "group.exact=false"],
    "plain": [*FORMER, "map.preconditioner=none", "loss.terms.mc.preconditioner=none"],
    "ramp-map": [*FORMER, "map.preconditioner=ramp", "loss.terms.mc.preconditioner=none"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the run directories")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--base", default="default", choices=list(SETTINGS),
                   help="the setting that the 'fewer' and 'faster' ratios divide (default: default)")
    p.add_argument("--reach", default=None, choices=list(SETTINGS),
                   help="report when each setting's validation PSNR reaches this setting's final one")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra eqdeq train overrides for every setting")
    return p.parse_args(argv)


def run_child(name: str, out: Path, overrides: list[str]) -> None:
    """Train one setting in this process, counting the DEQ's evaluations; write ``count.json``."""
    import torch

    from eqdeq_cli.cli import main as cli_main
    from eqdeq_cli.deq.layer import DEQ

    torch.set_num_threads(1)
    calls = []
    original = DEQ.record

    def record(self, stats):
        if self.training:
            calls.append(stats)
        return original(self, stats)

    DEQ.record = record
    run_dir = out / name
    t0 = time.perf_counter()
    rc = cli_main(["train", *SETTINGS[name], *overrides, f"hydra.run.dir={run_dir}", "trainer.progress=false"])
    wall = time.perf_counter() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    steps = max(int(metrics.get("steps", 0)), 1)
    fwd = sum(c.forward.iterations + 1 for c in calls)
    bwd = sum(b.iterations for c in calls for b in c.backward)
    hits = sum(c.cache_hits for c in calls)
    samples = sum(int(c.forward.residual.numel()) for c in calls)
    summary = {"setting": name, "rc": rc, "steps": steps, "calls": len(calls), "fwd_per_step": fwd / steps,
               "bwd_per_step": bwd / steps, "cache_hit_share": hits / max(samples, 1), "wall_s": wall,
               **{k: metrics.get(k) for k in ("train_time_s", "psnr", "ssim", "psnr_init", "converged_frac",
                                              "iters_mean")}}
    (run_dir / "count.json").write_text(json.dumps(summary))


def validation_curve(run_dir: Path) -> list[tuple[float, float]]:
    """``(time_s, psnr)`` of the run's validation rows, in step order."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split") == "val" and r.get("psnr")]
    return [(float(r["time_s"]), float(r["psnr"])) for r in sorted(rows, key=lambda r: int(r["step"]))]


def report_reach(out: Path, names: list[str], ref: str) -> None:
    """Print, per setting, when its validation PSNR first reaches ``ref``'s final one."""
    curves = {name: validation_curve(out / name) for name in names}
    if len(curves.get(ref, [])) < 2:
        print(f"--reach {ref}: no validation curve (add trainer.eval_every=N to the overrides)")
        return
    ref_time, target = curves[ref][-1]
    print(f"time to {target:.2f} dB (the final validation PSNR of {ref}, reached there at {ref_time:.0f} s):")
    for name, curve in curves.items():
        hit = next(((t, p) for t, p in curve if p >= target), None)
        when = f"{hit[0]:7.0f} s ({hit[0] / ref_time:5.1%} of {ref}'s time)" if hit else "    not reached"
        last = f"final {curve[-1][1]:.2f} dB at {curve[-1][0]:.0f} s" if curve else "no validation rows"
        print(f"  {name:12s} {when}; {last}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(args.child, args.out, args.overrides)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {}
    for name in args.settings:
        log = open(args.out / f"{name.replace('+', '_')}.log", "w")
        cmd = [sys.executable, __file__, "--out", str(args.out), "--child", name, "--", *args.overrides]
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    rows = {}
    for name, (proc, log) in procs.items():
        proc.wait()
        log.close()
        path = args.out / name / "count.json"
        if proc.returncode != 0 or not path.is_file():
            print(f"  {name}: failed (exit {proc.returncode}); see {log.name}")
            continue
        rows[name] = json.loads(path.read_text())
    base = rows.get(args.base)
    if base is None:
        print(f"(--base {args.base} did not run: ratios are blank; add it to --settings)")
    print(f"{'setting':12s} {'fwd/step':>9s} {'bwd/step':>9s} {'total':>7s} {'fewer':>6s} {'train s':>8s} "
          f"{'faster':>6s} {'psnr':>6s} {'ssim':>6s} {'conv':>5s} {'hits':>5s}")
    for name, r in rows.items():
        total = r["fwd_per_step"] + r["bwd_per_step"]
        fewer = (base["fwd_per_step"] + base["bwd_per_step"]) / total if base else float("nan")
        faster = base["train_time_s"] / r["train_time_s"] if base and r["train_time_s"] else float("nan")
        conv = r.get("converged_frac")
        print(f"{name:12s} {r['fwd_per_step']:9.1f} {r['bwd_per_step']:9.1f} {total:7.1f} x{fewer:5.2f} "
              f"{r['train_time_s'] or float('nan'):8.1f} x{faster:5.2f} {r['psnr'] or float('nan'):6.2f} "
              f"{r['ssim'] or float('nan'):6.3f} {conv if conv is not None else float('nan'):5.2f} "
              f"{r['cache_hit_share']:5.2f}")
    if args.reach:
        report_reach(args.out, list(rows), args.reach)


if __name__ == "__main__":
    main()
