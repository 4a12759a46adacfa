#!/usr/bin/env python
"""Side-by-side benchmark of an implicit DEQ training step: eqdeq against torchdeq.

Both libraries train the same map on the same data, in one process, with the same
iteration budget, so only the DEQ machinery differs:

* sparse-view CT (``CTRadon``, 128², 60 views by default), batch 8 of random ellipse
  phantoms, noiseless measurements ``y``;
* the proximal-gradient map ``z ↦ D(z − γAᵀ(Az − y))`` of :class:`eqdeq_cli.deq.ProxGradMap`
  with a residual ``DnCNN`` (depth 5, width 16): one copy per library, equal weights;
* implicit differentiation with Anderson acceleration in both passes, exactly ``--iters``
  forward and ``--iters`` backward iterations (tolerance 0), started at ``A†y``;
* a step = forward, loss ``‖A x − y‖² / B``, backward, one Adam update.

torchdeq runs as ``get_deq(ift=True, f_solver="anderson", b_solver="anderson", f_tol=0,
b_tol=0, f_max_iter=N, b_max_iter=N)`` (Anderson history 5 forward, its default 6
backward). The steps alternate (eqdeq, torchdeq, eqdeq, …) after one warm-up each, so
load from other jobs hits both alike; the report gives the median time per step and the
ratio ``torchdeq / eqdeq`` (> 1: eqdeq is faster), with the median of the per-pair
ratios beside it. Both clocks are reported: wall time, and the CPU time of this process
(``time.process_time``), which on a machine shared with other jobs is the steadier
measure of the work a step does when torch runs one thread (``--threads 1``).

torchdeq is a benchmark-only dependency (``pip install 'eqdeq[bench]'``); without it the
script says so and exits with status 0 after timing eqdeq alone.

``--channels-last`` adds both libraries with the denoiser in channels-last layout: eqdeq so
is eqdeq as shipped (``trainer.channels_last`` is on by default), and torchdeq so compares
the two libraries on equal layouts.

``--solver-only`` times the two Anderson solvers alone (at least 50 iterations, on a map
without network or operator), the solver's own cost per iteration: on a GPU, where each small
kernel costs a launch, this is most of a step at small image sizes.

``--device cuda`` runs both on the GPU; each timed step then waits for the device to finish
(the CPU clock is then no measure of the work).

Example: ``python scripts/bench_torchdeq.py --threads 1 --repeats 10 --channels-last``.
"""
from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_deq import add_device_argument, add_setup_arguments, build, check_device  # noqa: E402  (scripts/ is on the path when run as a script)

from eqdeq_cli.deq import DEQ, ProxGradMap, anderson_solve  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(p)
    add_device_argument(p)
    p.add_argument("--iters", type=int, default=20, help="forward and backward Anderson iterations")
    p.add_argument("--repeats", type=int, default=6, help="timed steps per library (interleaved)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--autograd-vjp", action="store_true",
                   help="also time eqdeq with grad.closed_form_vjp=false (the operator through autograd)")
    p.add_argument("--channels-last", action="store_true",
                   help="also time both libraries with the denoiser in channels-last layout (eqdeq's "
                        "trainer.channels_last=true, its default), so the report holds eqdeq as shipped "
                        "and both libraries on equal layouts")
    p.add_argument("--quick", action="store_true", help="64², 30 views, batch 4, 5 iterations, 3 repeats")
    p.add_argument("--solver-only", action="store_true",
                   help="time the two Anderson solvers alone, on the map z ↦ 0.9 z + c of the batch's image "
                        "shape (no network, no operator): the solver's own cost per iteration")
    args = p.parse_args(argv)
    if args.quick:
        args.img_size, args.views, args.batch, args.iters, args.repeats = 64, 30, 4, 5, 3
    return args


def load_torchdeq():
    """torchdeq's ``get_deq`` and its version, or ``(None, reason)``."""
    try:
        from importlib.metadata import version

        from torchdeq import get_deq
    except ImportError as err:
        return None, f"torchdeq is not installed ({err}); install the bench extra: pip install 'eqdeq[bench]'"
    return get_deq, version("torchdeq")


def eqdeq_step_fn(fmap: ProxGradMap, physics, y: torch.Tensor, n: int, closed_form_vjp: bool = True):
    solver = functools.partial(anderson_solve, max_iter=n, tol=0.0, m=5)
    deq = DEQ(fmap, grad="implicit", forward_solver=solver, backward_solver=solver,
              closed_form_vjp=closed_form_vjp)
    opt = torch.optim.Adam(fmap.parameters(), lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = (physics.A(deq(y)) - y).pow(2).sum() / y.shape[0]
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def torchdeq_step_fn(get_deq, fmap: ProxGradMap, physics, y: torch.Tensor, n: int):
    deq = get_deq(ift=True, f_solver="anderson", b_solver="anderson", f_max_iter=n, b_max_iter=n,
                  f_tol=0.0, b_tol=0.0)
    opt = torch.optim.Adam(fmap.parameters(), lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        ctx = fmap.prepare(y)
        z0 = fmap.init(y).detach()
        zs, _ = deq(lambda z: fmap(z, ctx), z0, solver_kwargs={"m": 5})
        loss = (physics.A(zs[-1]) - y).pow(2).sum() / y.shape[0]
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def solver_steps(img_size: int, batch: int, iters: int, device: str) -> dict:
    """Anderson solves of ``iters`` iterations (tolerance 0, history 5) on ``z ↦ 0.9 z + c``,
    one per library: what each solver costs per iteration beside the map."""
    from torchdeq.solver import get_solver

    c = torch.randn(batch, 1, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(device)
    z0 = torch.zeros_like(c)
    theirs = get_solver("anderson")
    return {"eqdeq": lambda: anderson_solve(lambda z: 0.9 * z + c, z0, max_iter=iters, tol=0.0, m=5),
            "torchdeq": lambda: theirs(lambda z: 0.9 * z + c, z0, max_iter=iters, tol=0.0, m=5)}


def channels_last(denoiser: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``denoiser`` in channels-last layout, as ``trainer.channels_last=true`` makes it."""
    return copy.deepcopy(denoiser).to(memory_format=torch.channels_last)


def synchronize() -> None:
    """Wait for queued CUDA work, so that a clock read after a step counts all of it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(steps: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Time each step function ``repeats`` times, alternating between them after one warm-up
    each; ``{clock: {name: seconds per step}}`` for the wall and the process CPU clocks."""
    for step in steps.values():
        step()
    synchronize()
    times: dict[str, dict[str, list[float]]] = {"wall": {n: [] for n in steps}, "cpu": {n: [] for n in steps}}
    for _ in range(repeats):
        for name, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            synchronize()
            times["cpu"][name].append(time.process_time() - c)
            times["wall"][name].append(time.perf_counter() - t)
    return times


def report(times: dict[str, dict[str, list[float]]], reference: str, *, scale: float = 1.0, unit: str = "s/step",
           label: str = "per-pair") -> None:
    """Median time per name and clock (in ``unit``: seconds × ``scale``) and the ratio
    ``reference / name`` (> 1: ``name`` is faster), with the median of the per-repeat ratios."""
    for clock, by_name in times.items():
        print(f" {clock} clock")
        ref = by_name[reference]
        for name, ts in by_name.items():
            med = statistics.median(ts)
            line = (f"  {name:22s} median {scale * med:9.3f} {unit}  "
                    f"(min {scale * min(ts):.3f}, max {scale * max(ts):.3f})")
            if name != reference:
                pair = statistics.median(r / t for r, t in zip(ref, ts))
                line += f"  {reference}/{name}: x{statistics.median(ref) / med:.2f} ({label} median x{pair:.2f})"
            print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_device(args)
    get_deq, info = load_torchdeq()
    if args.solver_only:
        if get_deq is None:
            raise SystemExit(f"--solver-only compares with torchdeq: {info}")
        iters = max(args.iters, 50)
        print(f"Anderson alone on z ↦ 0.9 z + c, batch {args.batch} of {args.img_size}², {iters} iterations "
              f"(tol 0, history 5), torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
              f"torchdeq {info}, {args.repeats} interleaved repeats; µs per iteration")
        times = interleaved(solver_steps(args.img_size, args.batch, iters, args.device), args.repeats)
        report(times, reference="torchdeq", scale=1e6 / iters, unit="µs/it")
        return
    physics, denoiser, _, y = build(args)
    print(f"CT {args.img_size}², {args.views} views, batch {args.batch}, DnCNN depth {args.depth} width "
          f"{args.width}, {args.iters}+{args.iters} Anderson iterations (tol 0), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}, {args.repeats} interleaved repeats")
    steps = {"eqdeq": eqdeq_step_fn(ProxGradMap(copy.deepcopy(denoiser), physics), physics, y, args.iters)}
    if args.autograd_vjp:
        steps["eqdeq autograd vjp"] = eqdeq_step_fn(ProxGradMap(copy.deepcopy(denoiser), physics), physics, y,
                                                    args.iters, closed_form_vjp=False)
    if args.channels_last:
        steps["eqdeq channels-last"] = eqdeq_step_fn(ProxGradMap(channels_last(denoiser), physics), physics, y,
                                                     args.iters)
    if get_deq is None:
        print(f"  torchdeq mode skipped: {info}")
    else:
        print(f"  torchdeq {info}")
        steps["torchdeq"] = torchdeq_step_fn(get_deq, ProxGradMap(copy.deepcopy(denoiser), physics),
                                             physics, y, args.iters)
        if args.channels_last:
            steps["torchdeq channels-last"] = torchdeq_step_fn(get_deq, ProxGradMap(channels_last(denoiser), physics),
                                                               physics, y, args.iters)
    report(interleaved(steps, args.repeats), reference="torchdeq" if "torchdeq" in steps else "eqdeq")


if __name__ == "__main__":
    main()
