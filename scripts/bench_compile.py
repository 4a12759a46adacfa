#!/usr/bin/env python
"""Side-by-side benchmark of denoiser variants in an implicit DEQ training step: eager,
``torch.compile`` and channels-last memory layout.

Setup: the task of ``scripts/bench_deq.py`` (``--img-size``, ``--views``, ``--batch``,
``--depth``, ``--width``; CT 128², 60 views, batch 8, DnCNN depth 5 width 16 by default).
The DnCNN's last convolution gets small random weights (its default initialisation
scaled by 0.1) instead of zeros, so that the residual branch and every layer's gradient are
non-zero and the equality check below compares real numbers.

Variants (``--variants``), each a copy of the same denoiser:

* ``eager``: the module as it is;
* ``compile``: ``module.compile()`` (what ``trainer.compile=true`` does), default mode;
* ``compile_static``: ``module.compile(dynamic=False)``;
* ``channels_last``: the module's 4-D weights in ``torch.channels_last`` (what
  ``trainer.channels_last=true`` does); convolutions then produce channels-last activations;
* ``compile+channels_last``: both.

Measured, interleaving the variants repeat by repeat (so load from other jobs hits all
alike), median over ``--repeats`` after one warm-up call each:

* ``forward``: one denoiser call without autograd at the step's batch shape (what each
  forward-solver iteration costs);
* ``forward+vjp``: one tracked call and one vector–Jacobian product with respect to the
  input;
* ``vjp``: one vector–Jacobian product through a kept graph (what each backward-solver
  iteration of the implicit mode costs);
* ``step``: one implicit training step with exactly ``--iters`` Anderson iterations forward
  and ``--iters`` backward (tol 0), loss ``‖A f(y) − y‖² / B``, its gradients; no
  optimizer update (the weights stay the same, so every repeat computes the same step; an
  update of these few parameters costs well under a millisecond).

Reported per variant: the time of its first calls (step first, as in training; then
forward, tracked call, VJP; for the compiled variants this is the compilation, with the
number of graphs compiled); the medians and the ratio ``eager / variant`` (> 1: the
variant is faster) with the median of the per-repeat ratios, on the wall and process-CPU
clocks; and the largest deviation from eager of the forward output, the VJP (after every
replay of the kept graph), the step's loss and the step's parameter gradients, each tensor
relative to its own largest magnitude (float32 rounding, amplified by the solves, gives
about 1e-3 on the step; 1e-2 and above is a different result).

The implicit backward replays the tracked denoiser call's graph once per backward
iteration (``retain_graph=True``). A graph compiled by ``torch.compile`` frees ("donates")
its saved buffers in the backward pass by default and then refuses a second pass, so the
compiled variants run with ``torch._functorch.config.donated_buffer = False``
(``--donated-buffers`` leaves torch's default, to show the failure).

``--device cuda`` times the variants on the GPU (each call waits for the device to finish).

Example: ``python scripts/bench_compile.py --threads 1 --repeats 5``.
"""
from __future__ import annotations

import argparse
import copy
import functools
import sys
import time
from pathlib import Path

import torch
import torch._dynamo.config
import torch._functorch.config
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_deq import add_device_argument, add_setup_arguments, build, check_device  # noqa: E402  (scripts/ is on the path when run as a script)
from bench_torchdeq import interleaved, report, synchronize  # noqa: E402

from eqdeq_cli.deq import DEQ, ProxGradMap, anderson_solve  # noqa: E402

VARIANTS = ("eager", "compile", "compile_static", "channels_last", "compile+channels_last")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_arguments(p)
    add_device_argument(p)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--iters", type=int, default=20, help="forward and backward Anderson iterations per step")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per variant (interleaved)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--donated-buffers", action="store_true",
                   help="keep torch.compile's donated buffers (the implicit backward then fails)")
    p.add_argument("--quick", action="store_true", help="64², 30 views, batch 4, 5 iterations, 3 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.img_size, args.views, args.batch, args.iters, args.repeats = 64, 30, 4, 5, 3
    return args


def make_variant(denoiser: nn.Module, name: str) -> nn.Module:
    """A copy of ``denoiser`` (same weights) in the layout and compilation ``name`` says."""
    d = copy.deepcopy(denoiser)
    if name.endswith("channels_last"):  # what trainer.channels_last does
        d.to(memory_format=torch.channels_last)
    if name.startswith("compile"):
        d.compile(dynamic=False if name == "compile_static" else None)
    return d


def variant_calls(d: nn.Module, physics, y: torch.Tensor, iters: int) -> dict:
    """The timed calls of one variant: ``forward``, ``forward+vjp``, ``vjp`` and ``step``,
    each a function of no arguments returning the tensors to compare."""
    fmap = ProxGradMap(d, physics)
    solver = functools.partial(anderson_solve, max_iter=iters, tol=0.0)
    deq = DEQ(fmap, grad="implicit", forward_solver=solver, backward_solver=solver)
    with torch.no_grad():
        u = fmap.init(y)
    v = torch.randn(u.shape, generator=torch.Generator().manual_seed(0)).to(u.device)
    kept: dict[str, torch.Tensor] = {}

    def forward():
        with torch.no_grad():
            return [d(u)]

    def forward_vjp():
        x = u.clone().requires_grad_()
        return list(torch.autograd.grad(d(x), x, v))

    def vjp():
        if not kept:
            kept["x"] = u.clone().requires_grad_()
            kept["out"] = d(kept["x"])
        return list(torch.autograd.grad(kept["out"], kept["x"], v, retain_graph=True))

    def step():
        fmap.zero_grad(set_to_none=True)
        loss = (physics.A(deq(y)) - y).pow(2).sum() / y.shape[0]
        loss.backward()
        return [loss.detach()] + [p.grad for p in fmap.parameters()]

    # The step first: as in training, the tracked call's first backward is then a VJP through a
    # kept graph (its compiled backward is built for that).
    return {"step": step, "forward": forward, "forward+vjp": forward_vjp, "vjp": vjp}


def first_calls(calls: dict) -> tuple[float, int]:
    """Wall time of the first call of each function, in order (compilation, for a compiled variant)
    and the number of graphs torch.compile built meanwhile."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    t = time.perf_counter()
    for call in calls.values():
        call()
    synchronize()
    return time.perf_counter() - t, counters["stats"]["unique_graphs"] - graphs


def deviation(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest over the tensors of ``max |a − b| / max |a|`` (each tensor relative to its own
    scale, so that a small gradient computed wrongly is not hidden by a large one)."""
    return max(float((x - z).abs().max()) / max(float(x.abs().max()), 1e-30) for x, z in zip(a, b))


def compare_variants(args: argparse.Namespace) -> dict:
    """Build the task and the variants, time them interleaved and compare their results.

    Returns ``{"first": {variant: (seconds, graphs)}, "times": {call: {clock: {variant:
    [seconds]}}}, "deviation": {variant: {call: relative deviation from eager}},
    "failed": {variant: message}}``."""
    torch._dynamo.config.recompile_limit = 64  # every compiled copy has its own graphs
    torch._functorch.config.donated_buffer = bool(args.donated_buffers)
    physics, denoiser, _, y = build(args)
    last = denoiser.net[-1]
    last.reset_parameters()
    with torch.no_grad():
        last.weight.mul_(0.1)
        last.bias.mul_(0.1)
    names = ["eager"] + [n for n in args.variants if n != "eager"]
    calls, first, failed = {}, {}, {}
    for name in names:
        c = variant_calls(make_variant(denoiser, name), physics, y, args.iters)
        try:
            first[name] = first_calls(c)
        except Exception as err:  # noqa: BLE001  (a variant torch cannot run is reported, not fatal)
            failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            continue
        calls[name] = c
    times = {what: interleaved({n: c[what] for n, c in calls.items()}, args.repeats)
             for what in ("forward", "forward+vjp", "vjp", "step")}
    results = {n: {what: call() for what, call in c.items()} for n, c in calls.items()}
    dev = {n: {what: deviation(results["eager"][what], r[what]) for what in r}
           for n, r in results.items() if n != "eager"}
    return {"first": first, "times": times, "deviation": dev, "failed": failed}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_device(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CT {args.img_size}², {args.views} views, batch {args.batch}, DnCNN depth {args.depth} width "
          f"{args.width}, step = {args.iters}+{args.iters} Anderson iterations (tol 0), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}, {args.repeats} interleaved repeats")
    out = compare_variants(args)
    for name, msg in out["failed"].items():
        print(f"  {name}: failed: {msg}")
    print("\nfirst calls (step, forward, tracked call, vjp; compilation for compiled variants)")
    for name, (seconds, graphs) in out["first"].items():
        print(f"  {name:22s} {seconds:7.2f} s  ({graphs} graphs compiled)")
    for what, times in out["times"].items():
        print(f"\n{what}")
        report(times, "eager", scale=1e3, unit="ms", label="per-repeat")
    print("\nlargest deviation from eager (per tensor, relative to its largest magnitude)")
    for name, devs in out["deviation"].items():
        print(f"  {name:22s} " + "  ".join(f"{what} {d:.1e}" for what, d in devs.items()))
    if out["failed"]:
        print(f"\nfailed variants: {', '.join(out['failed'])}")


if __name__ == "__main__":
    main()
