"""Benchmark CTRadon (sparse system matrix, exact adjoint) against rotate-and-sum Radon.

The reference is the approach common in PyTorch imaging code: for every view, rotate the
(zero-padded) image with ``grid_sample`` and sum over rows; its adjoint is obtained by
autograd (a vector-Jacobian product through a graph built once and reused, which is the
most favourable timing for the reference). Both run on the same machine in the same
process; the table reports medians over repeats and the speed-ups.

    python scripts/bench_physics.py [--batch 8] [--size 128] [--views 60] [--repeats 20]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from eqdeq_cli.physics import CTRadon


class RotateSumRadon:
    """Parallel-beam Radon by rotating the padded image per view (bilinear) and summing rows."""

    def __init__(self, img_size: int, angles: torch.Tensor, n_detectors: int) -> None:
        self.pad = n_detectors - img_size
        # Sample the image on the grid rotated by θ (grid_sample's y axis points down, hence
        # the sign of sin), so that summing rows gives p_θ(s) in CTRadon's convention.
        cos, sin = torch.cos(angles), -torch.sin(angles)
        zero = torch.zeros_like(cos)
        self.thetas = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1).float()
        self.size = n_detectors

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n, _ = x.shape
        lo = self.pad // 2
        padded = F.pad(x, (lo, self.pad - lo, lo, self.pad - lo))
        views = []
        for theta in self.thetas:
            grid = F.affine_grid(theta.expand(b, 2, 3), [b, c, self.size, self.size], align_corners=False)
            views.append(F.grid_sample(padded, grid, mode="bilinear", align_corners=False).sum(dim=-2))
        return torch.stack(views, dim=2)  # (B, C, n_views, n_detectors)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    start = time.perf_counter()
    ct = CTRadon(img_size=args.size, n_views=args.views, normalize=False)
    build = time.perf_counter() - start
    start = time.perf_counter()
    CTRadon(img_size=args.size, n_views=args.views)
    build_normalised = time.perf_counter() - start
    ref = RotateSumRadon(args.size, ct.angles, ct.n_detectors)

    g = torch.Generator().manual_seed(0)
    x = torch.rand((args.batch, 1, args.size, args.size), generator=g)
    y = torch.randn((args.batch,) + ct.meas_shape, generator=g)
    x_graph = torch.zeros_like(x, requires_grad=True)
    y_graph = ref(x_graph)

    def ref_adjoint() -> torch.Tensor:
        return torch.autograd.grad(y_graph, x_graph, grad_outputs=y, retain_graph=True)[0]

    with torch.no_grad():
        t_fwd, t_fwd_ref = median_ms(lambda: ct.A(x), args.repeats), median_ms(lambda: ref(x), args.repeats)
    t_adj, t_adj_ref = median_ms(lambda: ct.A_adjoint(y), args.repeats), median_ms(ref_adjoint, args.repeats)
    with torch.no_grad():
        t_fbp = median_ms(lambda: ct.A_dagger(y), args.repeats)

    # Sanity: both compute the same transform up to discretisation; both adjoints vs dot test.
    with torch.no_grad():
        a, b = ct.A(x), ref(x)
    rel = float((a - b).norm() / b.norm())
    dot = lambda u, v: float((u.double() * v.double()).sum())  # noqa: E731
    err_sparse = abs(dot(ct.A(x), y) - dot(x, ct.A_adjoint(y))) / abs(dot(x, ct.A_adjoint(y)))
    err_ref = abs(dot(ref(x), y) - dot(x, ref_adjoint())) / abs(dot(x, ref_adjoint()))

    print(f"CT {args.size}x{args.size}, {args.views} views, {ct.n_detectors} detectors, batch {args.batch}, "
          f"float32, {torch.get_num_threads()} threads, device cpu")
    print(f"system matrix: {ct._matrix.values().numel():,} non-zeros; build {build:.2f} s "
          f"(with ||A|| normalisation: {build_normalised:.2f} s)")
    print(f"{'operation':<22}{'sparse (ms)':>12}{'rotate-sum (ms)':>17}{'speed-up':>10}")
    for name, ours, theirs in (("A", t_fwd, t_fwd_ref), ("A_adjoint", t_adj, t_adj_ref),
                               ("A + A_adjoint", t_fwd + t_adj, t_fwd_ref + t_adj_ref)):
        print(f"{name:<22}{ours:>12.2f}{theirs:>17.2f}{theirs / ours:>9.1f}x")
    print(f"{'A_dagger (FBP)':<22}{t_fbp:>12.2f}")
    print(f"forward agreement (sparse vs rotate-sum): relative difference {rel:.3%}")
    print(f"dot-product adjoint test: sparse {err_sparse:.1e}, rotate-sum+autograd {err_ref:.1e}")
    if not math.isfinite(rel):
        raise SystemExit("non-finite output")


if __name__ == "__main__":
    main()
