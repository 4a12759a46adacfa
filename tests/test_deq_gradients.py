"""DEQ layer: gradients of the implicit, JFB and unrolled modes against references.

The reference for the implicit gradient is long unrolling *started at the fixed point*:
backpropagating through K tracked steps from ``z*`` gives
``(∂T/∂θ)ᵀ Σ_{k<K} (Jᵀ)^k g``, which tends to ``(∂T/∂θ)ᵀ (I − Jᵀ)⁻¹ g`` (the exact
equilibrium gradient) as ``(Jᵀ)^K → 0``. The map below is a contraction (Lipschitz
≤ 0.75), so K = 150 leaves an error of 0.75¹⁵⁰ ≈ 1e-19.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import DEVICES
from eqdeq_cli.deq import DEQ, GradientSettings, HQSMap, ProxGradMap, anderson_solve, build_reconstructor, \
    fixed_point_solve
from eqdeq_cli.physics import DenseMatrixPhysics, Inpainting, LinearPhysics, MRICartesian, conjugate_gradient

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DT = torch.float64
TIGHT = functools.partial(anderson_solve, max_iter=300, tol=1e-12)


class ContractiveDenoiser(nn.Module):
    """``D(x) = x/2 + W₂ tanh(W₁ x + b₁) + b₂`` with ‖W₁‖, ‖W₂‖ ≤ 1/2, so Lip(D) ≤ 3/4.

    The bound ``‖conv‖₂ ≤ k ‖W‖_F`` (k×k kernel) sets the weight scale.
    """

    def __init__(self, channels: int = 1, width: int = 6, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1, padding_mode="circular")
        self.conv2 = nn.Conv2d(width, channels, 3, padding=1, padding_mode="circular")
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
                conv.weight.mul_(0.5 / (3 * conv.weight.norm()))
                conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + self.conv2(torch.tanh(self.conv1(x)))


def make_problem(map_cls=ProxGradMap, seed: int = 0, batch: int = 3, **map_options):
    g = torch.Generator().manual_seed(seed)
    n, m = 64, 40
    physics = DenseMatrixPhysics(torch.randn(m, n, generator=g, dtype=DT) / n**0.5, img_shape=(1, 8, 8))
    denoiser = ContractiveDenoiser(generator=g).to(DT)
    fmap = map_cls(denoiser, physics, **map_options).to(DT)
    x = torch.rand(batch, 1, 8, 8, generator=g, dtype=DT)
    y = physics.A(x) + 0.01 * torch.randn(batch, m, generator=g, dtype=DT)
    return fmap, physics, y


def make_deq(fmap, grad: str, **options) -> DEQ:
    options.setdefault("forward_solver", TIGHT)
    return DEQ(fmap, grad=grad, **options)


def reference_map(fmap, y: torch.Tensor):
    """The map written out from its definition, independent of ``fmap.prepare`` / ``fmap.forward``."""
    physics, gamma = fmap.physics, fmap.step.to(y.dtype)
    denoiser = fmap.denoiser if fmap.clip is None else (lambda u: fmap.denoiser(u).clamp(*fmap.clip))
    Aty = physics.A_adjoint(y)
    eta = fmap.anchor
    x0 = physics.A_dagger(y)
    if isinstance(fmap, HQSMap):
        return lambda z: denoiser((1 - eta) * conjugate_gradient(lambda v: physics.AtA(v) + v / gamma, Aty + z / gamma,
                                                                 x0=z, n_iter=fmap.cg_iters, tol=fmap.cg_tol)
                                  + eta * x0)
    return lambda z: denoiser((1 - eta) * (z - gamma * (physics.A_adjoint(physics.A(z)) - Aty)) + eta * x0)


def reference_call(fmap, y: torch.Tensor, steps: int = 150) -> torch.Tensor:
    """Differentiable surrogate of the equilibrium: ``steps`` tracked iterations from ``z*``."""
    T = reference_map(fmap, y)
    with torch.no_grad():
        z, stats = TIGHT(T, physics_init(fmap, y))
    assert stats.converged.all()
    for _ in range(steps):
        z = T(z)
    return z


def physics_init(fmap, y: torch.Tensor) -> torch.Tensor:
    return fmap.physics.A_dagger(y)


def gradients(loss: torch.Tensor, fmap, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(all θ flattened, the step's log-parameter alone, y) gradients of ``loss``."""
    params = list(fmap.parameters())
    grads = torch.autograd.grad(loss, params + [y])
    theta = torch.cat([gr.reshape(-1) for gr in grads[:-1]])
    step = grads[[i for i, p in enumerate(params) if p is fmap.log_step][0]]
    return theta, step, grads[-1].reshape(-1)


def assert_agree(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-6) -> None:
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0)
    assert cos >= 0.999
    assert abs(float(a.norm() / b.norm()) - 1) <= 0.01
    assert float((a - b).norm() / b.norm()) <= rel


def generic_loss(f, y, physics, w):
    x = f(y)
    return (w * x).sum() + (physics.A(x) - y).pow(2).sum()


def ei_loss(f, y, physics, alpha: float = 0.5):
    """Two chained calls: x₁ = f(y), x₂ = roll(x₁), x₃ = f(A x₂); MC + α‖x₃ − x₂‖²."""
    x1 = f(y)
    x2 = torch.roll(x1, shifts=(2, 3), dims=(2, 3))
    x3 = f(physics.A(x2))
    return (physics.A(x1) - y).pow(2).sum() + alpha * (x3 - x2).pow(2).sum()


@pytest.mark.parametrize("map_cls, options", [(ProxGradMap, {}), (ProxGradMap, {"anchor": 0.3}),
                                              (ProxGradMap, {"clip": (0.2, 0.6)}),
                                              (HQSMap, {"cg_iters": 4, "cg_tol": 0.0}),
                                              (HQSMap, {"cg_iters": 4, "cg_tol": 0.0, "anchor": 0.3}),
                                              (HQSMap, {"cg_iters": 4, "cg_tol": 0.0, "clip": (0.2, 0.6)})],
                         ids=["prox_grad", "prox_grad_anchored", "prox_grad_clipped", "hqs", "hqs_anchored",
                              "hqs_clipped"])
def test_implicit_gradient_matches_long_unrolling_from_the_fixed_point(map_cls, options):
    fmap, physics, y = make_problem(map_cls, **options)
    if "clip" in options:  # the box binds on part of the fixed point, not on all of it
        with torch.no_grad():
            z = make_deq(fmap, "implicit")(y)
        at_bounds = ((z == options["clip"][0]) | (z == options["clip"][1])).double().mean()
        assert 0.05 < at_bounds < 0.95
    y = y.requires_grad_()
    w = torch.randn(y.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=DT)
    deq = make_deq(fmap, "implicit")
    got = gradients(generic_loss(deq, y, physics, w), fmap, y)
    assert deq.last_stats.forward.converged.all()
    assert len(deq.last_stats.backward) == 1 and deq.last_stats.backward[0].converged.all()
    ref = gradients(generic_loss(lambda v: reference_call(fmap, v), y, physics, w), fmap, y)
    for a, b in zip(got, ref):  # θ, the step γ alone, y
        assert_agree(a, b)


def test_chained_calls_of_an_ei_loss_backpropagate_exactly():
    fmap, physics, y = make_problem()
    y = y.requires_grad_()
    deq = make_deq(fmap, "implicit")
    got = gradients(ei_loss(deq, y, physics), fmap, y)
    stats = deq.pop_stats()
    assert len(stats) == 2 and all(len(s.backward) == 1 for s in stats)
    ref = gradients(ei_loss(lambda v: reference_call(fmap, v), y, physics), fmap, y)
    for a, b in zip(got, ref):
        assert_agree(a, b)


def test_jfb_is_an_inexact_descent_direction():
    # JFB drops (I − Jᵀ)⁻¹: its gradient points the same way (positive cosine) but is not
    # the equilibrium gradient. With this Lipschitz-3/4 map it is mostly shorter.
    fmap, physics, y = make_problem()
    y = y.requires_grad_()
    implicit = gradients(ei_loss(make_deq(fmap, "implicit"), y, physics), fmap, y)
    jfb = gradients(ei_loss(make_deq(fmap, "jfb"), y, physics), fmap, y)
    for a, b in ((jfb[0], implicit[0]), (jfb[2], implicit[2])):  # θ and y
        assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0
        assert float((a - b).norm() / b.norm()) > 0.05


def test_unrolled_approaches_the_implicit_gradient_as_steps_grow():
    fmap, physics, y = make_problem()
    y = y.requires_grad_()
    w = torch.randn(y.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=DT)
    implicit = gradients(generic_loss(make_deq(fmap, "implicit"), y, physics, w), fmap, y)[0]
    errors = {}
    for k in (3, 10, 100):
        deq = make_deq(fmap, "unrolled", unroll_steps=k)
        theta = gradients(generic_loss(deq, y, physics, w), fmap, y)[0]
        assert deq.last_stats.forward.iterations == k
        errors[k] = float((theta - implicit).norm() / implicit.norm())
    assert errors[3] > errors[10] > errors[100]
    assert errors[3] > 1e-2 and errors[100] < 1e-6


def count_graph_nodes(t: torch.Tensor) -> int:
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return len(seen)


def test_implicit_graph_does_not_grow_with_iterations_but_unrolled_does():
    fmap, _, y = make_problem()
    sizes = {}
    for iters in (5, 40):
        solver = functools.partial(fixed_point_solve, max_iter=iters, tol=0.0)
        out = make_deq(fmap, "implicit", forward_solver=solver)(y)
        sizes["implicit", iters] = count_graph_nodes(out)
        sizes["unrolled", iters] = count_graph_nodes(make_deq(fmap, "unrolled", unroll_steps=iters)(y))
    assert sizes["implicit", 5] == sizes["implicit", 40]
    assert sizes["unrolled", 40] > 5 * sizes["unrolled", 5] > 5 * sizes["implicit", 5]


def test_eval_mode_uses_the_eval_solver_and_builds_no_graph():
    fmap, _, y = make_problem()
    deq = make_deq(fmap, "implicit", forward_solver=functools.partial(fixed_point_solve, max_iter=3, tol=1e-10),
                   eval_solver=functools.partial(anderson_solve, max_iter=200, tol=1e-10))
    deq(y)
    assert deq.last_stats.forward.iterations == 3
    deq.eval()
    with torch.no_grad():
        x = deq(y)
    assert deq.last_stats.forward.converged.all() and deq.last_stats.forward.iterations > 3
    assert not x.requires_grad
    # The output is (one step past) the fixed point: T(x) = x.
    ctx = fmap.prepare(y)
    with torch.no_grad():
        torch.testing.assert_close(fmap(x, ctx), x, rtol=1e-9, atol=1e-9)


def test_unrolled_model_is_evaluated_with_its_own_iterations():
    """An unrolled network is K iterations from A†y in training and in evaluation alike."""
    fmap, _, y = make_problem()
    deq = make_deq(fmap, "unrolled", unroll_steps=3,
                   eval_solver=functools.partial(anderson_solve, max_iter=200, tol=1e-10)).eval()
    with torch.no_grad():
        x = deq(y)
        ctx = fmap.prepare(y)
        z = fmap.init(y)
        for _ in range(3):
            z = fmap(z, ctx)
    assert deq.last_stats.forward.iterations == 3
    torch.testing.assert_close(x, z, rtol=0, atol=0)


def test_warm_start_reuses_the_previous_solution():
    fmap, _, y = make_problem()
    deq = make_deq(fmap, "jfb", forward_solver=functools.partial(anderson_solve, max_iter=200, tol=1e-9),
                   warm_start=True)
    deq(y)
    cold = deq.last_stats.forward.iterations
    deq(y)
    assert cold > 5 and deq.last_stats.forward.iterations == 1
    deq(y[:2])  # another batch shape: starts cold again
    assert deq.last_stats.forward.iterations > 5


def test_non_finite_forward_solve_is_reported(caplog):
    fmap, _, y = make_problem()
    with torch.no_grad():
        fmap.denoiser.conv2.bias.fill_(float("nan"))
    deq = make_deq(fmap, "implicit")
    with caplog.at_level(logging.WARNING, logger="eqdeq_cli.deq.layer"):
        deq(y)
    assert deq.last_stats.forward.nonfinite
    assert not deq.last_stats.forward.converged.any()
    assert "non-finite" in caplog.text


def test_invalid_gradient_mode_lists_the_valid_ones():
    fmap, _, _ = make_problem()
    with pytest.raises(ValueError, match="implicit, jfb, unrolled.*'implict'"):
        DEQ(fmap, grad="implict", forward_solver=TIGHT)
    with pytest.raises(ValueError, match="implicit, jfb, unrolled"):
        GradientSettings(mode="backprop")


def test_hqs_fixed_point_satisfies_its_definition():
    fmap, physics, y = make_problem(HQSMap, cg_iters=64, cg_tol=0.0, step_init=0.7)
    deq = make_deq(fmap, "implicit").eval()
    with torch.no_grad():
        x = deq(y)
        # prox_{γf}(x) = (AᵀA + I/γ)⁻¹ (Aᵀy + x/γ), by a dense solve.
        M, gamma = physics.matrix, 0.7
        lhs = M.T @ M + torch.eye(64, dtype=DT) / gamma
        prox = torch.linalg.solve(lhs, (y @ M + x.reshape(3, -1) / gamma).T).T.reshape(x.shape)
        torch.testing.assert_close(fmap.denoiser(prox), x, rtol=1e-9, atol=1e-9)


def test_step_is_positive_and_initialised_from_the_operator_norm():
    fmap, physics, _ = make_problem()
    assert float(fmap.step.detach()) == pytest.approx(1.0 / physics.norm() ** 2, rel=1e-6)  # log γ stored in float32
    fixed = ProxGradMap(fmap.denoiser, physics, step_init=0.3, learn_step=False)
    assert float(fixed.step) == pytest.approx(0.3) and not any(p is fixed.log_step for p in fixed.parameters())
    with pytest.raises(ValueError, match="step_init"):
        ProxGradMap(fmap.denoiser, physics, step_init=-1.0)


@pytest.mark.parametrize("map_name", ["prox_grad", "hqs"])
@pytest.mark.parametrize("solver_name", ["anderson", "fixed_point"])
@pytest.mark.parametrize("grad_name", ["implicit", "jfb", "unrolled"])
def test_configs_build_a_working_reconstructor(map_name, solver_name, grad_name):
    cfg = OmegaConf.create({
        "map": OmegaConf.load(CONFIGS / "map" / f"{map_name}.yaml"),
        "solver": OmegaConf.load(CONFIGS / "solver" / f"{solver_name}.yaml"),
        "grad": OmegaConf.load(CONFIGS / "grad" / f"{grad_name}.yaml"),
    })
    fmap, physics, y = make_problem()
    deq = build_reconstructor(cfg, physics, fmap.denoiser)
    assert deq.grad == grad_name and type(deq.fmap).__name__ == {"prox_grad": "ProxGradMap", "hqs": "HQSMap"}[map_name]
    assert deq.forward_solver.keywords["max_iter"] == cfg.solver.forward.max_iter
    assert deq.eval_solver.keywords["max_iter"] == cfg.solver.eval.max_iter
    x = deq(y)
    x.pow(2).sum().backward()
    assert deq.fmap.log_step.grad is not None and torch.isfinite(x).all()


def test_misspelt_solver_option_fails_when_building():
    cfg = OmegaConf.create({
        "map": OmegaConf.load(CONFIGS / "map" / "prox_grad.yaml"),
        "solver": OmegaConf.load(CONFIGS / "solver" / "anderson.yaml"),
        "grad": OmegaConf.load(CONFIGS / "grad" / "implicit.yaml"),
    })
    cfg.solver.backward.max_iters = 10
    fmap, physics, _ = make_problem()
    with pytest.raises(TypeError, match="solver.backward.*max_iters"):
        build_reconstructor(cfg, physics, fmap.denoiser)
    cfg.solver.backward.pop("max_iters")
    cfg.solver.eval.tol = -1.0
    with pytest.raises(ValueError, match="solver.eval: tol"):
        build_reconstructor(cfg, physics, fmap.denoiser)


def test_an_option_the_map_does_not_take_is_named_with_the_maps_options():
    cfg = OmegaConf.create({
        "map": OmegaConf.load(CONFIGS / "map" / "hqs.yaml"),
        "solver": OmegaConf.load(CONFIGS / "solver" / "anderson.yaml"),
        "grad": OmegaConf.load(CONFIGS / "grad" / "implicit.yaml"),
    })
    cfg.map.preconditioner = "ramp"  # a ProxGradMap option
    fmap, physics, _ = make_problem()
    with pytest.raises(ValueError, match=r"^map: HQSMap has no option 'preconditioner'; its options: step_init, "
                                         r"learn_step, cg_iters, cg_tol, anchor, clip$"):
        build_reconstructor(cfg, physics, fmap.denoiser)


@pytest.mark.parametrize("make_physics", [
    lambda: Inpainting(img_size=8, keep_fraction=0.5),
    lambda: MRICartesian(img_size=8, acceleration=2, center_fraction=0.25),
], ids=["inpainting", "mri"])
def test_hqs_uses_closed_form_prox_and_its_fixed_point_satisfies_the_definition(make_physics):
    g = torch.Generator().manual_seed(3)
    physics = make_physics().to(DT)
    fmap = HQSMap(ContractiveDenoiser(generator=g), physics, step_init=0.5).to(DT)
    assert fmap.closed_form_prox
    y = physics.A(torch.rand(2, 1, 8, 8, generator=g, dtype=DT))
    deq = make_deq(fmap, "implicit").eval()
    with torch.no_grad():
        x = deq(y)
        # The proximal map by the generic conjugate-gradient route of the base class.
        prox = LinearPhysics.prox_data(physics, x, y, 0.5, n_iter=200, tol=1e-14)
        torch.testing.assert_close(fmap.denoiser(prox), x, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_implicit_gradient_under_bf16_autocast_stays_close_to_float32(device):
    # The network runs in bfloat16 under autocast; the solves (forward and backward) run in
    # float32, so the gradient differs from the float32 one only by the map's own rounding.
    fmap, physics, y = make_problem()
    physics = DenseMatrixPhysics(physics.matrix.float(), img_shape=(1, 8, 8))
    fmap = ProxGradMap(fmap.denoiser.float(), physics).to(device)
    y = y.float().to(device).requires_grad_()
    w = torch.randn(y.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)
    solver = functools.partial(anderson_solve, max_iter=100, tol=1e-5)
    grads = {}
    for amp in (False, True):
        deq = make_deq(fmap, "implicit", forward_solver=solver)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = generic_loss(deq, y, fmap.physics, w)
        grads[amp] = gradients(loss, fmap, y)
        assert deq.last_stats.backward[0].residual.max() < 1e-3
    for a, b in zip(grads[True], grads[False]):
        assert a.dtype == torch.float32
        assert float((a - b).norm() / b.norm()) < 2e-2


@pytest.mark.parametrize("anchor", [0.0, 0.3])
def test_closed_form_data_step_transpose_equals_autograd(anchor):
    fmap, physics, y = make_problem(anchor=anchor)
    ctx = fmap.prepare(y)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(y.shape[0], 1, 8, 8, generator=g, dtype=DT).requires_grad_()
    w = torch.randn(z.shape, generator=g, dtype=DT)
    (auto,) = torch.autograd.grad(fmap.data_step(z, ctx), z, w)
    assert torch.allclose(fmap.data_step_vjp(w), auto, rtol=0, atol=1e-13)


@pytest.mark.parametrize("loss", ["generic", "ei"])
def test_closed_form_backward_gives_the_autograd_gradient(loss):
    fmap, physics, y = make_problem()
    y = y.requires_grad_()
    w = torch.randn(y.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=DT)
    got = {}
    for closed in (True, False):
        deq = make_deq(fmap, "implicit", closed_form_vjp=closed)
        value = generic_loss(deq, y, physics, w) if loss == "generic" else ei_loss(deq, y, physics)
        got[closed] = gradients(value, fmap, y)
        assert all(s.converged.all() for s in deq.last_stats.backward)
    for a, b in zip(got[True], got[False]):
        assert float((a - b).norm() / b.norm()) < 1e-10


def test_fixed_point_cache_returns_a_sample_only_for_its_own_measurements():
    from eqdeq_cli.deq.layer import FixedPointCache

    g = torch.Generator().manual_seed(5)
    y, z = torch.randn(3, 7, generator=g, dtype=DT), torch.randn(3, 1, 2, 2, generator=g, dtype=DT)
    cache = FixedPointCache(4)
    cache.store(y, z)
    y_mixed = torch.stack([y[2], torch.randn(7, generator=g, dtype=DT), y[0]])
    start, hits = cache.fill(y_mixed, torch.zeros(3, 1, 2, 2, dtype=DT))
    assert hits == 2
    assert torch.equal(start[0], z[2]) and torch.equal(start[2], z[0])
    assert torch.equal(start[1], torch.zeros(1, 2, 2, dtype=DT))
    cache.store(torch.randn(3, 7, generator=g, dtype=DT), z)  # 6 entries > capacity 4: the oldest two go
    assert len(cache) == 4
    _, hits = cache.fill(y, torch.zeros(3, 1, 2, 2, dtype=DT))
    assert hits == 1  # only y[2] survived
    with pytest.raises(ValueError, match="sample_cache must be an integer >= 1"):
        FixedPointCache(0)


def test_sample_cache_starts_a_seen_sample_at_its_fixed_point_and_keeps_gradients_exact():
    fmap, physics, y = make_problem()
    y = y.requires_grad_()
    w = torch.randn(y.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=DT)
    plain = make_deq(fmap, "implicit")
    cached = make_deq(fmap, "implicit", sample_cache=8)
    ref = gradients(generic_loss(plain, y, physics, w), fmap, y)
    first = gradients(generic_loss(cached, y, physics, w), fmap, y)
    n_first = cached.last_stats.forward.iterations
    assert cached.last_stats.cache_hits == 0
    again = gradients(generic_loss(cached, y, physics, w), fmap, y)
    assert cached.last_stats.cache_hits == y.shape[0]
    assert cached.last_stats.forward.iterations < n_first // 2
    for a, b, c in zip(first, again, ref):
        assert float((a - c).norm() / c.norm()) < 1e-9
        assert float((b - c).norm() / c.norm()) < 1e-9
    # Evaluation never starts from training solutions.
    cached.eval()
    with torch.no_grad():
        cached(y)
    assert cached.last_stats.cache_hits == 0


def test_half_precision_start_is_solved_in_float32():
    # An operator run under autocast may hand back a bfloat16 A†y; the solve iterates in float32.
    fmap, physics, y = make_problem()
    physics = DenseMatrixPhysics(physics.matrix.float(), img_shape=(1, 8, 8))
    fmap = ProxGradMap(fmap.denoiser.float(), physics)
    fmap.init = lambda y: physics.A_dagger(y).to(torch.bfloat16)
    deq = make_deq(fmap, "implicit", forward_solver=functools.partial(anderson_solve, max_iter=100, tol=1e-5))
    z, stats = deq.solve(y.float(), fmap.prepare(y.float()))
    assert z.dtype == torch.float32
    assert stats.forward.converged.all()


def test_a_solve_started_at_its_fixed_point_stops_at_once():
    fmap, physics, y = make_problem()
    deq = make_deq(fmap, "implicit").eval()
    with torch.no_grad():
        z = deq(y)
        cold = deq.last_stats.forward.iterations
        deq(y, start=z)
    assert deq.last_stats.forward.iterations <= 1 < cold


def test_a_start_of_the_wrong_shape_is_refused():
    fmap, physics, y = make_problem()
    with pytest.raises(ValueError, match=r"start must have the reconstruction's shape \(3, 1, 8, 8\), got \(3, 1, 4, 4\)"):
        make_deq(fmap, "implicit")(y, start=torch.zeros(3, 1, 4, 4, dtype=DT))


def test_a_float32_start_is_not_rounded_to_a_half_precision_starting_image():
    # Under autocast the operator may return A†y in bfloat16; a given start keeps its precision.
    fmap, physics, y = make_problem()
    deq = make_deq(fmap, "implicit")
    start = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    fmap.init = lambda v: physics.A_dagger(v).to(torch.bfloat16)
    z0, hits = deq._start(y.float(), start)
    assert z0.dtype == torch.float32 and torch.equal(z0, start) and hits == 0


def test_the_sample_cache_round_trips_through_its_state():
    from eqdeq_cli.deq.layer import FixedPointCache

    cache = FixedPointCache(3)
    y, z = torch.randn(4, 1, 5, 6), torch.randn(4, 1, 8, 8)
    cache.store(y, z)  # capacity 3: the first sample is dropped
    again = FixedPointCache(3)
    again.load_state_dict(cache.state_dict())
    start, hits = again.fill(y, torch.zeros_like(z))
    assert hits == 3 and torch.equal(start[1:], z[1:]) and torch.equal(start[0], torch.zeros_like(z[0]))
    with pytest.raises(ValueError, match=r"^a sample cache needs as many measurements as fixed points, got 1 and 0$"):
        again.load_state_dict({"y": [y[0]], "z": []})


@pytest.mark.parametrize("stored, looked_up", [(8, 1), (1, 8), (8, 3)])
def test_the_sample_cache_finds_a_sample_whatever_the_batch_sizes(stored, looked_up):
    # measurements of the default CT size (25 views x 91 bins): a batched product of that length
    # rounds a row differently with the batch size, so keys must not depend on it (a resumed run
    # reloads its cache one sample at a time, then looks samples up in training batches)
    from eqdeq_cli.deq.layer import FixedPointCache

    gen = torch.Generator().manual_seed(3)
    y, z = torch.randn(8, 1, 25, 91, generator=gen), torch.randn(8, 1, 16, 16, generator=gen)
    cache = FixedPointCache(8)
    for i in range(0, 8, stored):
        cache.store(y[i:i + stored], z[i:i + stored])
    for i in range(0, 8, looked_up):
        start, hits = cache.fill(y[i:i + looked_up], torch.zeros_like(z[i:i + looked_up]))
        assert hits == len(start) and torch.equal(start, z[i:i + looked_up])


def test_a_clipped_map_projects_onto_its_box_and_refuses_a_bad_box_or_complex_images():
    fmap, physics, y = make_problem(clip=(0.0, 0.5))
    with torch.no_grad():
        z = fmap(torch.randn(3, 1, 8, 8, dtype=DT), fmap.prepare(y))
    assert float(z.min()) >= 0.0 and float(z.max()) <= 0.5 and bool((z == 0.5).any())
    for bad in ([1, 0], [0], "0,1", [0, float("inf")], [True, 2]):
        with pytest.raises(ValueError, match=r"^map.clip must be null or \[low, high\] with low < high"):
            ProxGradMap(nn.Identity(), physics, clip=bad)
    mri = MRICartesian(img_size=8, channels=2, acceleration=2, seed=0)
    with pytest.raises(ValueError, match="map.clip needs real images; MRICartesian reconstructs complex ones"):
        HQSMap(nn.Identity(), mri, clip=[0, 1])
