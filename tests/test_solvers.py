"""Fixed-point solvers: fixed points, speed of Anderson, statistics, failure reporting, options."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import DEVICES
from eqdeq_cli.deq.solvers import SolverStats, anderson_solve, fixed_point_solve

SOLVERS = [fixed_point_solve, anderson_solve]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def affine_problem(d: int = 40, batch: int = 3, shape: tuple[int, ...] = (), seed: int = 0):
    """``f(z) = W z + b`` with symmetric ``W`` of spectrum spread over [-0.9, 0.9] (‖W‖ = 0.9)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    W = q @ torch.diag(torch.linspace(-0.9, 0.9, d, dtype=torch.float64)) @ q.T
    b = torch.randn(batch, d, dtype=torch.float64, generator=g)
    z_star = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - W, b.T).T

    def f(z: torch.Tensor) -> torch.Tensor:
        return (z.reshape(batch, d) @ W.T + b).reshape(z.shape)

    z0 = torch.zeros((batch, d), dtype=torch.float64).reshape((batch,) + (shape or (d,)))
    return f, z0, z_star.reshape(z0.shape)


def relative_residual(f, z: torch.Tensor) -> torch.Tensor:
    fz = f(z)
    b = z.shape[0]
    return (fz - z).reshape(b, -1).norm(dim=1) / fz.reshape(b, -1).norm(dim=1)


@pytest.mark.parametrize("solve", SOLVERS)
def test_reaches_the_fixed_point_of_a_contraction(solve):
    # Images (B, C, H, W) work as well as vectors: the solver is batched over dim 0 only.
    f, z0, z_star = affine_problem(d=36, shape=(1, 6, 6))
    z, stats = solve(f, z0, max_iter=1000, tol=1e-11)
    assert stats.converged.all()
    assert z.shape == z0.shape
    assert (z - z_star).norm() / z_star.norm() < 1e-9


def test_solvers_agree_and_anderson_needs_fewer_iterations():
    f, z0, _ = affine_problem()
    z_fp, s_fp = fixed_point_solve(f, z0, max_iter=1000, tol=1e-10)
    z_aa, s_aa = anderson_solve(f, z0, max_iter=1000, tol=1e-10)
    assert s_fp.converged.all() and s_aa.converged.all()
    assert (z_fp - z_aa).norm() / z_fp.norm() < 1e-8
    # Plain iteration contracts by 0.9 per step (~200 steps); Anderson is far faster.
    assert s_aa.iterations * 2 <= s_fp.iterations


@pytest.mark.parametrize("solve", SOLVERS)
def test_stats_describe_the_returned_iterate(solve):
    # Per-sample contraction rates: sample 0 converges fast, sample 1 slowly.
    c = torch.tensor([0.1, 0.97], dtype=torch.float64).view(2, 1)
    b = torch.ones(2, 5, dtype=torch.float64)

    def f(z):
        return c * z + b

    z, stats = solve(f, torch.zeros(2, 5, dtype=torch.float64), max_iter=6, tol=1e-4, **(
        {"m": 1} if solve is anderson_solve else {}))
    assert isinstance(stats, SolverStats)
    assert stats.iterations == 6 == len(stats.history)
    assert stats.residual.shape == (2,) and stats.converged.dtype == torch.bool
    assert stats.converged.tolist() == [True, False]
    assert not stats.nonfinite
    torch.testing.assert_close(stats.residual, relative_residual(f, z), rtol=1e-12, atol=0)
    # History holds the largest residual per evaluation; the first is at z0 = 0: ‖b‖/‖b‖ = 1.
    assert stats.history[0] == pytest.approx(1.0)
    assert stats.history[-1] == pytest.approx(float(stats.residual.max()))


def test_stops_as_soon_as_every_sample_converged():
    # For this symmetric contraction the plain-iteration residual decreases monotonically,
    # so the solve must stop at the first evaluation where the worst sample reaches tol.
    f, z0, _ = affine_problem()
    _, stats = fixed_point_solve(f, z0, max_iter=1000, tol=1e-6)
    assert stats.converged.all()
    assert stats.history[-1] <= 1e-6 < min(stats.history[:-1])
    assert stats.iterations == len(stats.history) < 1000
    _, stats = anderson_solve(f, z0, max_iter=1000, tol=1e-6)
    assert stats.converged.all() and stats.iterations < 1000


@pytest.mark.parametrize("solve", SOLVERS)
def test_zero_tolerance_runs_exactly_max_iter(solve):
    f, z0, _ = affine_problem()
    _, stats = solve(f, z0, max_iter=17, tol=0.0)
    assert stats.iterations == 17
    assert not stats.converged.any()


@pytest.mark.parametrize("solve", SOLVERS)
def test_diverging_map_is_reported_not_propagated(solve):
    def f(z):
        return 1e30 * z + 1.0  # overflows float32 to inf within a few iterations

    z, stats = solve(f, torch.zeros(2, 4), max_iter=50, tol=1e-4)
    assert stats.nonfinite
    assert stats.iterations < 50
    assert not math.isfinite(stats.history[-1])
    assert not stats.converged.any()
    assert torch.isfinite(z).all()  # the best finite iterate comes back


def test_nan_in_one_sample_is_reported():
    def f(z):
        out = 0.5 * z + 1.0
        out[1] = float("nan")
        return out

    z, stats = anderson_solve(f, torch.zeros(3, 4), max_iter=20, tol=1e-6)
    assert stats.nonfinite and stats.iterations == 1
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("solve", SOLVERS)
def test_float32_input_gives_float32_output(solve):
    f, z0, z_star = affine_problem()
    W_f = lambda z: f(z.double()).float()  # noqa: E731
    z, stats = solve(W_f, z0.float(), max_iter=300, tol=1e-5)
    assert z.dtype == torch.float32
    assert stats.converged.all()
    assert (z.double() - z_star).norm() / z_star.norm() < 1e-4


@pytest.mark.parametrize("solve", SOLVERS)
def test_unknown_option_raises_type_error(solve):
    f, z0, _ = affine_problem()
    with pytest.raises(TypeError, match="max_iters"):
        solve(f, z0, max_iters=10)


@pytest.mark.parametrize("option, value, name", [
    ({"max_iter": 0}, 0, "max_iter"),
    ({"max_iter": 2.5}, 2.5, "max_iter"),
    ({"tol": -1e-3}, -1e-3, "tol"),
    ({"tol": "1e-3"}, "1e-3", "tol"),  # what YAML 1.1 makes of an undotted exponent
    ({"m": 0}, 0, "m"),
    ({"lam": 0.0}, 0.0, "lam"),
    ({"beta": 1.5}, 1.5, "beta"),
])
def test_invalid_anderson_values_name_the_option(option, value, name):
    f, z0, _ = affine_problem()
    with pytest.raises(ValueError, match=rf"^{name} must"):
        anderson_solve(f, z0, **option)


def test_invalid_damping_names_the_option():
    f, z0, _ = affine_problem()
    with pytest.raises(ValueError, match="damping"):
        fixed_point_solve(f, z0, damping=0.0)


def test_damping_converges_where_plain_iteration_oscillates():
    # f(z) = -1.2 z + 1 is expansive; damping 0.5 gives z ↦ -0.1 z + 0.5 (a contraction).
    def f(z):
        return -1.2 * z + 1.0

    z0 = torch.zeros(1, 3, dtype=torch.float64)
    _, plain = fixed_point_solve(f, z0, max_iter=60, tol=1e-8)
    z, damped = fixed_point_solve(f, z0, max_iter=60, tol=1e-8, damping=0.5)
    assert not plain.converged.any()
    assert damped.converged.all()
    torch.testing.assert_close(z, torch.full_like(z, 1.0 / 2.2))


def test_solvers_do_not_build_a_graph_but_allow_vjps():
    # The backward solve of the implicit gradient calls torch.autograd.grad inside f.
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = 0.5 * torch.tanh(x)
    g = torch.ones(2, 3, dtype=torch.float64)

    def f(v):
        (jtv,) = torch.autograd.grad(y, x, v, retain_graph=True)
        return jtv + g

    v, stats = anderson_solve(f, g, max_iter=100, tol=1e-12)
    assert stats.converged.all() and not v.requires_grad
    expected = g / (1 - 0.5 * (1 - torch.tanh(x.detach()) ** 2))
    torch.testing.assert_close(v, expected)


@pytest.mark.parametrize("name, func", [("anderson", anderson_solve), ("fixed_point", fixed_point_solve)])
def test_solver_configs_instantiate(name, func):
    cfg = OmegaConf.load(CONFIGS / "solver" / f"{name}.yaml")
    assert set(cfg.keys()) == {"forward", "backward", "eval"}
    f, z0, z_star = affine_problem()
    for key in ("forward", "backward", "eval"):
        solver = instantiate(cfg[key])
        assert isinstance(solver, functools.partial) and solver.func is func
        assert isinstance(solver.keywords["tol"], float) and isinstance(solver.keywords["max_iter"], int)
        _, stats = solver(f, z0)
        assert stats.iterations <= solver.keywords["max_iter"]
    assert cfg.eval.max_iter >= cfg.forward.max_iter and cfg.eval.tol == 1e-4
    if name == "anderson":  # training solves reach the evaluation tolerance (docs/stability.md)
        assert cfg.forward.tol == cfg.eval.tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solve", SOLVERS)
def test_bf16_autocast_leaves_the_solver_arithmetic_in_float32(solve, device):
    # Under autocast the map keeps running under it (here its ops stay float32, as
    # elementwise ops do), but the solver's own inner products and mixing must not drop to
    # bfloat16: with them in bfloat16 Anderson stalls near a relative residual of 1e-3.
    c = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).to(device)
    seen = []

    def f(z):
        seen.append(torch.is_autocast_enabled(device))
        return 0.5 * z + c

    with torch.autocast(device, dtype=torch.bfloat16):
        z, stats = solve(f, torch.zeros(3, 50, device=device), max_iter=60, tol=1e-6)
    assert all(seen) and seen
    assert z.dtype == torch.float32 and z.device.type == device
    assert stats.converged.all()
    assert (z - 2 * c).norm() / (2 * c).norm() < 1e-5


@pytest.mark.parametrize("solve", SOLVERS)
def test_bf16_map_output_is_cast_to_the_iterate_dtype(solve):
    # A map whose matmul autocast runs in bfloat16 returns bfloat16; the iterates stay float32
    # and the solve reaches what that map's precision allows.
    g = torch.Generator().manual_seed(1)
    W = torch.randn(20, 20, generator=g)
    W = 0.5 * W / torch.linalg.matrix_norm(W, 2)
    c = torch.randn(2, 20, generator=g)
    z_star = torch.linalg.solve(torch.eye(20) - W, c.T).T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, stats = solve(lambda z: z @ W.T + c, torch.zeros(2, 20), max_iter=60, tol=1e-2)
        assert (torch.zeros(2, 20) @ W.T).dtype == torch.bfloat16
    assert z.dtype == torch.float32
    assert stats.converged.all()
    assert (z - z_star).norm() / z_star.norm() < 3e-2


def test_singular_anderson_system_takes_a_plain_step_instead_of_raising():
    # lam = 1e-16 on f(z) = z + d: every residual equals d, so the Gram matrix is exactly
    # singular in float32 (torch.linalg.solve raised LinAlgError here).
    d = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    z, stats = anderson_solve(lambda z: z + d, torch.zeros(2, 10), max_iter=50, tol=1e-4, lam=1e-16)
    assert not stats.converged.any()
    assert torch.isfinite(z).all()


def test_tiny_lam_still_solves_a_contraction():
    f, z0, z_star = affine_problem()
    z, stats = anderson_solve(f, z0, max_iter=300, tol=1e-10, lam=1e-16)
    assert stats.converged.all()
    assert (z - z_star).norm() / z_star.norm() < 1e-8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lam", [1e-16, 1e-12, 1e-8])
def test_runaway_iterates_of_a_map_without_fixed_point_are_not_converged(dtype, lam):
    # f(z) = z + d has no fixed point. Anderson with a tiny lam extrapolated its iterates
    # to ‖z‖ ≈ 1e8, where ‖d‖ / ‖f(z)‖ (and in float32 even f(z) − z) vanishes, and
    # reported convergence.
    d = torch.randn(2, 10, generator=torch.Generator().manual_seed(0)).to(dtype)
    _, stats = anderson_solve(lambda z: z + d, torch.zeros(2, 10, dtype=dtype), max_iter=50, tol=1e-4, lam=lam)
    assert not stats.converged.any()


def test_plain_iteration_on_a_map_without_fixed_point_is_not_converged():
    # z_k = k d: the uncapped relative residual 1/k falls below tol after 1/tol iterations.
    d = torch.ones(1, 4, dtype=torch.float64)
    _, stats = fixed_point_solve(lambda z: z + d, torch.zeros(1, 4, dtype=torch.float64), max_iter=2000, tol=1e-3)
    assert not stats.converged.any()
    assert stats.residual.item() == pytest.approx(1e-2)  # ‖d‖ over the capped scale 100 ‖d‖


@pytest.mark.parametrize("solve", SOLVERS)
def test_fixed_point_far_larger_than_the_start_still_converges(solve):
    # z* = 50 c from z0 = 0 (scale of the start ‖c‖): well inside the cap on the denominator.
    c = torch.ones(2, 6, dtype=torch.float64)
    z, stats = solve(lambda z: 0.98 * z + c, torch.zeros(2, 6, dtype=torch.float64), max_iter=3000, tol=1e-6)
    assert stats.converged.all()
    assert torch.allclose(z, 50 * c, rtol=1e-4)


def test_the_tracker_keeps_its_iterate_sized_buffers_across_iterations():
    # The loop allocates nothing of the iterate's size: the best iterate and the residual
    # f(z) − z live in buffers made once per solve, and the best iterate is per sample the one
    # with the smallest residual.
    from eqdeq_cli.deq.solvers import _Tracker

    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(3, 1, 4, 4, generator=g)
    tracker = _Tracker(z0, tol=0.0)
    best_ptr = tracker.best.data_ptr()
    iterates = [torch.randn(3, 1, 4, 4, generator=g) for _ in range(4)]
    fz = [z + torch.randn(3, 1, 1, 1, generator=g).abs() * 0.1 * (k + 1) * torch.randn(z.shape, generator=g)
          for k, z in enumerate(iterates)]
    for z, f in zip(iterates, fz):
        tracker.update(z, f)
        step_ptr = tracker._step.data_ptr()
        assert tracker.best.data_ptr() == best_ptr and tracker._step.data_ptr() == step_ptr
    res = torch.stack([(f - z).flatten(1).norm(dim=1) / f.flatten(1).norm(dim=1) for z, f in zip(iterates, fz)])
    best, stats = tracker.result()
    for b in range(3):
        k = int(res[:, b].argmin())
        assert torch.equal(best[b], iterates[k][b])
        assert float(stats.residual[b]) == pytest.approx(float(res[k, b]), rel=1e-6)
