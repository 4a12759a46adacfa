#!/usr/bin/env python
"""Benchmark of the DEQ layer: cost of a training step per gradient mode, solver speed, overhead.

Setup (defaults): sparse-view CT (``CTRadon``, 128², 60 views, ‖A‖ = 1), batch 8 of random
ellipse phantoms, noiseless measurements, a residual ``DnCNN`` (depth 5, width 16), the
proximal-gradient map, an MC-like loss ``‖A f(y) − y‖² / B``, one Adam step.

Three measurements:

1. **Training step, per gradient mode and iteration count N** (10, 30, 100): ``implicit``
   (Anderson forward and backward solves of exactly N evaluations, ``tol = 0``), ``jfb``
   (forward solve of N evaluations) and ``unrolled`` (N tracked iterations). Wall time and
   peak memory of one step.

   *Peak memory* is measured in a fresh subprocess per configuration: after building the
   model, data and operator and running one warm-up step with 2 iterations (so lazily
   allocated kernels and optimizer state exist), the kernel's resident-set high-water mark is
   reset (``echo 5 > /proc/self/clear_refs``), the step runs, and the figure is
   ``VmHWM − VmRSS(before the step)``: the extra resident memory the step needed at its
   peak, in MiB. It counts everything the step touches (activations kept for autograd,
   solver buffers, temporaries), not only tensors. Where ``clear_refs`` cannot be written
   the script falls back to ``ru_maxrss`` minus the RSS before the step, which can only
   over-state a step's peak when setup peaked higher (reported as ``method=ru_maxrss``).
   The child runs with a fixed glibc mmap threshold of 128 KiB, so large tensors are
   returned to the kernel when freed and the resident set tracks live memory (otherwise
   freed heap pages stay resident and a later step reuses them unseen). Reported: the
   largest peak over the timed steps.

2. **Forward iterations to reach tol 1e-4**, Anderson vs plain iteration (max 300), on the
   DEQ whose denoiser was briefly trained (``--train-steps`` Adam steps of supervised
   denoising of phantoms plus Gaussian noise), and on the untrained (identity) denoiser,
   for which the map is a Landweber step.

3. **Solver overhead**: in an implicit step the solvers' calls of ``f`` (map evaluations in
   the forward solve, vector–Jacobian products in the backward solve) are timed; the
   overhead is ``Σ(time inside the solver − time inside its f calls) / step time``, i.e. the
   share of the step spent in solver bookkeeping (Anderson's least squares, residuals,
   buffers) rather than in the network and the operator.

The machine may be shared: absolute times are noisy, ratios measured side by side in one
run are what matter. Run ``python scripts/bench_deq.py --quick`` for a small fast check.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from eqdeq_cli.data.phantoms import random_ellipse_phantoms
from eqdeq_cli.deq import DEQ, ProxGradMap, anderson_solve, fixed_point_solve
from eqdeq_cli.physics import CTRadon

MODES = ("implicit", "jfb", "unrolled")


def add_setup_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark task's options (image size, views, batch, denoiser size), shared by the
    DEQ benchmarks so that they measure the same setup."""
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--views", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--width", type=int, default=16)


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """``--device``: where the benchmark's operator, denoiser and data live (``cpu`` or ``cuda``)."""
    p.add_argument("--device", default="cpu", help="cpu or cuda (times then wait for the device to finish)")


def check_device(args: argparse.Namespace) -> None:
    if str(getattr(args, "device", "cpu")).startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(p)
    p.add_argument("--iters", type=int, nargs="+", default=[10, 30, 100])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2, help="timed steps per configuration (minimum reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="64², 30 views, batch 4, iterations 5 and 15")
    p.add_argument("--skip", nargs="*", default=[], choices=["steps", "iterations", "overhead"])
    p.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.img_size, args.views, args.batch = 64, 30, 4
        args.iters, args.train_steps = [5, 15], 10
    return args


# -- setup -------------------------------------------------------------------------------------

def build(args: argparse.Namespace, seed: int = 0):
    from eqdeq_cli.models import DnCNN

    torch.manual_seed(seed)
    physics = CTRadon(img_size=args.img_size, n_views=args.views)
    denoiser = DnCNN(channels=1, depth=args.depth, width=args.width)
    x = torch.from_numpy(random_ellipse_phantoms(args.batch, args.img_size, 1, np.random.default_rng(seed)))
    device = torch.device(getattr(args, "device", "cpu"))
    physics, denoiser, x = physics.to(device), denoiser.to(device), x.to(device)
    return physics, denoiser, x, physics.A(x)


def make_deq(fmap, mode: str, n: int, solver=anderson_solve) -> DEQ:
    fixed = functools.partial(solver, max_iter=n, tol=0.0)
    return DEQ(fmap, grad=mode, forward_solver=fixed, backward_solver=fixed, unroll_steps=n)


def training_step(deq: DEQ, physics, y: torch.Tensor, opt: torch.optim.Optimizer) -> float:
    opt.zero_grad(set_to_none=True)
    loss = (physics.A(deq(y)) - y).pow(2).sum() / y.shape[0]
    loss.backward()
    opt.step()
    return float(loss.detach())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_step(args: argparse.Namespace, mode: str, n: int) -> dict:
    """One configuration, run inside a fresh process."""
    physics, denoiser, _, y = build(args)
    fmap = ProxGradMap(denoiser, physics)
    opt = torch.optim.Adam(fmap.parameters(), lr=1e-4)
    training_step(make_deq(fmap, mode, 2), physics, y, opt)  # warm-up
    deq = make_deq(fmap, mode, n)
    seconds, peak_mib, method = [], 0.0, "clear_refs"
    for _ in range(args.repeats):
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            method = "ru_maxrss"
        before = _status_kib("VmRSS")
        t0 = time.perf_counter()
        training_step(deq, physics, y, opt)
        seconds.append(time.perf_counter() - t0)
        peak = _status_kib("VmHWM") if method == "clear_refs" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mib = max(peak_mib, (peak - before) / 1024)
    return {"mode": mode, "iters": n, "seconds": min(seconds), "peak_mib": peak_mib, "method": method}


def run_child(args: argparse.Namespace, mode: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", f"{mode}:{n}", "--img-size", str(args.img_size),
           "--views", str(args.views), "--batch", str(args.batch), "--depth", str(args.depth),
           "--width", str(args.width), "--threads", str(args.threads), "--repeats", str(args.repeats)]
    # A fixed glibc mmap threshold (which also turns off its dynamic growth) makes every
    # tensor above 128 KiB its own mapping, returned to the kernel when freed, so the
    # resident set follows live memory instead of retaining freed heap pages.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- solver comparison -------------------------------------------------------------------------

def pretrain_denoiser(denoiser, args: argparse.Namespace, sigma: float = 0.1) -> float:
    """A few Adam steps of supervised denoising on fresh phantoms; returns the last loss."""
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(denoiser.parameters(), lr=1e-3)
    loss = float("nan")
    for _ in range(args.train_steps):
        x = torch.from_numpy(random_ellipse_phantoms(args.batch, args.img_size, 1, rng))
        noisy = x + sigma * torch.randn(x.shape, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss_t = (denoiser(noisy) - x).pow(2).mean()
        loss_t.backward()
        opt.step()
        loss = loss_t.detach().item()
    return loss


def iterations_to_tol(fmap, y: torch.Tensor, tol: float = 1e-4, max_iter: int = 300) -> dict:
    ctx = fmap.prepare(y)
    out = {}
    with torch.no_grad():
        z0 = fmap.init(y)
        for name, solver in (("anderson", anderson_solve), ("fixed_point", fixed_point_solve)):
            _, stats = solver(lambda z: fmap(z, ctx), z0, max_iter=max_iter, tol=tol)
            out[name] = {"iterations": stats.iterations, "converged": bool(stats.converged.all()),
                         "residual": float(stats.residual.max())}
    return out


# -- overhead ----------------------------------------------------------------------------------

def timed_solver(solver, n: int, clock: dict):
    """``solver`` with exactly n evaluations, accumulating total and in-``f`` wall time."""
    def solve(f, z0):
        def timed_f(z):
            t = time.perf_counter()
            out = f(z)
            clock["f"] += time.perf_counter() - t
            return out

        t = time.perf_counter()
        result = solver(timed_f, z0, max_iter=n, tol=0.0)
        clock["solver"] += time.perf_counter() - t
        return result
    return solve


def solver_overhead(args: argparse.Namespace, fmap, y: torch.Tensor, physics, n: int) -> dict:
    out = {}
    for name, solver in (("anderson", anderson_solve), ("fixed_point", fixed_point_solve)):
        clock = {"f": 0.0, "solver": 0.0}
        s = timed_solver(solver, n, clock)
        deq = DEQ(fmap, grad="implicit", forward_solver=s, backward_solver=s)
        opt = torch.optim.SGD(fmap.parameters(), lr=0.0)
        best = None
        for _ in range(args.repeats):
            clock["f"] = clock["solver"] = 0.0
            t = time.perf_counter()
            training_step(deq, physics, y, opt)
            step = time.perf_counter() - t
            share = (clock["solver"] - clock["f"]) / step
            if best is None or step < best["step_s"]:
                best = {"step_s": step, "overhead_share": share}
        out[name] = best
    return out


# -- main --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        mode, n = args.child.split(":")
        print(json.dumps(measure_step(args, mode, int(n))))
        return

    print(f"CT {args.img_size}², {args.views} views, batch {args.batch}, DnCNN depth {args.depth} "
          f"width {args.width}, torch threads {torch.get_num_threads()}")
    if "steps" not in args.skip:
        print("\n1. one training step (fresh process per row; min time of --repeats steps; peak = extra resident memory during a step)")
        rows = {}
        for mode in args.modes:
            for n in args.iters:
                r = run_child(args, mode, n)
                rows[mode, n] = r
                print(f"  {mode:9s} N={n:4d}  {r['seconds']:7.2f} s  peak {r['peak_mib']:8.1f} MiB  ({r['method']})",
                      flush=True)
        lo, hi = min(args.iters), max(args.iters)
        for mode in args.modes:
            a, b = rows[mode, lo], rows[mode, hi]
            print(f"  {mode:9s} N={hi}/N={lo}: time x{b['seconds'] / a['seconds']:.2f}, "
                  f"peak memory x{b['peak_mib'] / max(a['peak_mib'], 1e-9):.2f}")
        if "implicit" in args.modes and "jfb" in args.modes:
            for n in args.iters:
                print(f"  implicit / jfb time at N={n}: x{rows['implicit', n]['seconds'] / rows['jfb', n]['seconds']:.2f}")

    physics, denoiser, _, y = build(args)
    fmap = ProxGradMap(denoiser, physics)
    if "iterations" not in args.skip:
        print("\n2. forward iterations to relative residual 1e-4 (max 300)")
        report_iterations(args, fmap, denoiser, y)
    if "overhead" not in args.skip:
        n = max(args.iters[0], 10)
        print(f"\n3. solver overhead in an implicit step, N={n} forward and backward evaluations")
        for name, r in solver_overhead(args, fmap, y, physics, n).items():
            print(f"  {name:11s} step {r['step_s']:.2f} s, outside network/operator: {100 * r['overhead_share']:.1f} %")


def report_iterations(args: argparse.Namespace, fmap, denoiser, y: torch.Tensor) -> None:
    untrained = iterations_to_tol(fmap, y)
    last = pretrain_denoiser(denoiser, args)
    trained = iterations_to_tol(fmap, y)
    for label, res in (("identity denoiser (Landweber)", untrained),
                       (f"denoiser after {args.train_steps} steps (mse {last:.2e})", trained)):
        a, f = res["anderson"], res["fixed_point"]
        ratio = f["iterations"] / a["iterations"]
        print(f"  {label}: anderson {a['iterations']} ({'converged' if a['converged'] else 'not converged'}, "
              f"res {a['residual']:.1e}), fixed point {f['iterations']} "
              f"({'converged' if f['converged'] else 'not converged'}, res {f['residual']:.1e}), "
              f"ratio x{ratio:.1f}{'+' if not f['converged'] else ''}")


if __name__ == "__main__":
    main()
