"""Stability of the DEQ: the guarded implicit backward, and the contraction monitor.

A map that does not contract at its fixed point has no implicit gradient
(``I − Jᵀ`` is singular or its Neumann series diverges). The implicit mode must then not
pass on what its backward solver returned: those samples take the Jacobian-free gradient,
and the step is counted.
"""
from __future__ import annotations

import functools
import logging

import pytest
import torch
from torch import nn

from eqdeq_cli.analysis.contraction import spectral_norm_per_sample
from eqdeq_cli.deq import DEQ, MapContext, anderson_solve, fixed_point_solve

DT = torch.float64


class LinearMap(nn.Module):
    """``T(z; y) = s · (W z) + y`` on ``(B, 1, 4, 4)``, with ``W`` orthogonal: ``‖∂T/∂z‖₂ = |s|``.

    ``scale`` may be a per-sample tensor ``(B,)``, so one batch can mix contractive and
    expansive samples.
    """

    def __init__(self, scale: float | torch.Tensor, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=DT))
        self.register_buffer("w", q)
        self.theta = nn.Parameter(torch.ones((), dtype=DT))
        self.scale = scale

    def prepare(self, y: torch.Tensor) -> MapContext:
        return MapContext(y=y, Aty=y)

    def init(self, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(y)

    def forward(self, z: torch.Tensor, ctx: MapContext) -> torch.Tensor:
        s = torch.as_tensor(self.scale, dtype=z.dtype).reshape(-1, 1, 1, 1)
        wz = (z.reshape(z.shape[0], 16) @ self.w.T).reshape(z.shape)
        return self.theta * s * wz + ctx.y


FWD = functools.partial(fixed_point_solve, max_iter=3, tol=0.0)
BWD = functools.partial(anderson_solve, max_iter=100, m=16, tol=1e-12)


def _grads(deq: DEQ, y: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = y.clone().requires_grad_()
    deq.zero_grad()
    (deq(y) * weight).sum().backward()
    return deq.fmap.theta.grad.clone(), y.grad.clone()


def test_expansive_map_falls_back_to_the_jacobian_free_gradient_per_sample(caplog):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(3, 1, 4, 4, generator=g, dtype=DT)
    weight = torch.randn(3, 1, 4, 4, generator=g, dtype=DT)
    scale = torch.tensor([0.5, 3.0, 0.5], dtype=DT)  # sample 1 has no implicit gradient
    implicit = DEQ(LinearMap(scale), grad="implicit", forward_solver=FWD, backward_solver=BWD,
                   backward_accept=1e-3).train()
    jfb = DEQ(LinearMap(scale), grad="jfb", forward_solver=FWD).train()

    _, gy_implicit = _grads(implicit, y, weight)
    _, gy_jfb = _grads(jfb, y, weight)

    stats = implicit.last_stats
    assert stats.fallbacks == [1]
    # The expansive sample takes exactly the JFB gradient; the others the implicit one,
    # which for this linear map is (I - s Wᵀ)⁻¹ g.
    assert torch.allclose(gy_implicit[1], gy_jfb[1], atol=1e-12)
    w = implicit.fmap.w
    for b in (0, 2):
        exact = torch.linalg.solve(torch.eye(16, dtype=DT) - 0.5 * w.T, weight[b].reshape(16))
        assert torch.allclose(gy_implicit[b].reshape(16), exact, atol=1e-8)
        assert not torch.allclose(gy_implicit[b], gy_jfb[b], atol=1e-3)


def test_non_finite_backward_solve_never_reaches_the_gradient():
    y = torch.ones(2, 1, 4, 4, dtype=DT)
    blowup = functools.partial(fixed_point_solve, max_iter=2000, tol=0.0)  # (Jᵀ)^k g overflows
    deq = DEQ(LinearMap(2.0), grad="implicit", forward_solver=FWD, backward_solver=blowup).train()
    gtheta, gy = _grads(deq, y, torch.ones_like(y))
    assert torch.isfinite(gtheta) and torch.isfinite(gy).all()
    assert deq.last_stats.backward[0].nonfinite and deq.last_stats.fallbacks == [2]


def test_a_contractive_map_never_falls_back():
    y = torch.randn(4, 1, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(2))
    deq = DEQ(LinearMap(0.8), grad="implicit", forward_solver=FWD, backward_solver=BWD, backward_accept=1e-6).train()
    _grads(deq, y, torch.ones_like(y))
    assert deq.last_stats.fallbacks == [0]


def test_backward_accept_is_validated():
    with pytest.raises(ValueError, match="backward_accept"):
        DEQ(LinearMap(0.5), grad="implicit", forward_solver=FWD, backward_accept=-1.0)


@pytest.mark.parametrize("scale", [0.3, 0.9, 1.7])
def test_contraction_estimate_matches_a_known_lipschitz_constant(scale):
    fmap = LinearMap(scale)
    y = torch.randn(2, 1, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    ctx = fmap.prepare(y)
    est = spectral_norm_per_sample(lambda z: fmap(z, ctx), torch.zeros_like(y), n_iter=3,
                                   generator=torch.Generator().manual_seed(0))
    assert torch.allclose(est, torch.full((2,), scale, dtype=DT), rtol=1e-10)


# -- the training loop records contraction and fallbacks -----------------------------------------
def test_training_logs_the_contraction_estimate_and_fallbacks(compose_cfg, tmp_path):
    import csv
    import json

    from conftest import TINY
    from eqdeq_cli.runs import train as run

    overrides = [*TINY, "trainer.max_steps=2", "trainer.contraction_every=1", "trainer.contraction_iters=4",
                 "trainer.eval_every=2"]
    summary = run.train(compose_cfg(overrides), run_dir=tmp_path)
    assert 0.0 < summary["lipschitz"] < 10.0 and summary["bwd_fallback_total"] >= 0
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert float(rows[-1]["lipschitz"]) == pytest.approx(summary["lipschitz"])
    assert json.loads((tmp_path / "metrics.json").read_text())["lipschitz"] == pytest.approx(summary["lipschitz"])


def test_a_non_contractive_map_is_reported(compose_cfg, tmp_path, caplog):
    from conftest import TINY
    from eqdeq_cli.runs import train as run

    # Inpainting with a residual denoiser that starts as the identity and a step of 1: the
    # gradient step keeps the nullspace unchanged, so ‖∂T/∂z‖₂ = 1 at the first step.
    overrides = [*TINY, "physics=inpainting", "trainer.max_steps=1", "trainer.contraction_every=1",
                 "trainer.contraction_iters=30", "map.learn_step=false",
                 "trainer.optimizer.lr=1e-12"]
    with caplog.at_level(logging.WARNING):
        summary = run.train(compose_cfg(overrides), run_dir=tmp_path)
    assert summary["lipschitz"] == pytest.approx(1.0, abs=0.05)
    assert "not a contraction" in caplog.text


# -- the step of the proximal-gradient map stays where the gradient step is non-expansive --------
def test_learned_step_is_capped_at_two_over_the_squared_norm():
    from eqdeq_cli.deq import ProxGradMap
    from eqdeq_cli.physics import DenseMatrixPhysics

    a = torch.diag(torch.tensor([2.0, 1.0, 0.5, 0.0], dtype=DT))  # ‖A‖ = 2, a nullspace
    fmap = ProxGradMap(nn.Identity(), DenseMatrixPhysics(a, img_shape=(1, 2, 2))).to(DT)
    assert float(fmap.step.detach()) == pytest.approx(0.25, rel=1e-6)
    with torch.no_grad():
        fmap.log_step.fill_(5.0)  # as an unchecked optimizer could push it
    assert float(fmap.step.detach()) == pytest.approx(0.5, rel=1e-6)
    ctx = fmap.prepare(torch.zeros(1, 4, dtype=DT))
    lip = spectral_norm_per_sample(lambda z: fmap(z, ctx), torch.zeros(1, 1, 2, 2, dtype=DT), n_iter=50,
                                   generator=torch.Generator().manual_seed(0))
    assert float(lip) <= 1.0 + 1e-9


@pytest.mark.parametrize("map_name", ["ProxGradMap", "HQSMap"])
@pytest.mark.parametrize("anchor", [0.1, 0.5])
def test_an_anchored_map_contracts_on_the_nullspace(anchor, map_name):
    # A has a nullspace and the denoiser is the identity: the plain map's Jacobian is I on the
    # nullspace (‖J‖ = 1), the anchored one's is (1 − η) times the data step's, of norm exactly 1 − η.
    from eqdeq_cli import deq as deq_module
    from eqdeq_cli.physics import DenseMatrixPhysics

    map_cls = getattr(deq_module, map_name)

    physics = DenseMatrixPhysics(torch.diag(torch.tensor([1.0, 1.0, 0.5, 0.0], dtype=DT)), img_shape=(1, 2, 2))
    y = torch.randn(2, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    lips = {}
    for eta in (0.0, anchor):
        fmap = map_cls(nn.Identity(), physics, anchor=eta).to(DT)
        ctx = fmap.prepare(y)
        lips[eta] = spectral_norm_per_sample(lambda z: fmap(z, ctx), torch.zeros(2, 1, 2, 2, dtype=DT),
                                             n_iter=50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lips[0.0], torch.ones(2, dtype=DT), rtol=1e-9)
    assert torch.allclose(lips[anchor], torch.full((2,), 1 - anchor, dtype=DT), rtol=1e-9)
    # The fixed point of the anchored map with D = I solves z = (1 − η)(z − γAᵀ(Az − y)) + η A†y.
    deq = DEQ(fmap, grad="implicit", forward_solver=functools.partial(anderson_solve, max_iter=200, tol=1e-12))
    with torch.no_grad():
        z = deq(y)
        torch.testing.assert_close(fmap(z, fmap.prepare(y)), z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("anchor", [-0.1, 1.0, float("nan")])
def test_an_anchor_outside_zero_one_is_refused(anchor):
    from eqdeq_cli.deq import HQSMap, ProxGradMap
    from eqdeq_cli.physics import DenseMatrixPhysics

    for map_cls in (ProxGradMap, HQSMap):
        with pytest.raises(ValueError, match=r"anchor must be a real number in \[0.0, 1.0\)"):
            map_cls(nn.Identity(), DenseMatrixPhysics(torch.eye(4, dtype=DT), img_shape=(1, 2, 2)), anchor=anchor)


def test_a_step_above_its_cap_is_refused():
    from eqdeq_cli.deq import ProxGradMap
    from eqdeq_cli.physics import DenseMatrixPhysics

    physics = DenseMatrixPhysics(torch.eye(4, dtype=DT), img_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="step_init=3 exceeds step_max=2"):
        ProxGradMap(nn.Identity(), physics, step_init=3.0)


def test_training_psnr_of_complex_images_follows_the_evaluation_protocol(compose_cfg, tmp_path, monkeypatch):
    """The displayed training PSNR compares images as evaluation does: magnitudes for complex
    (2-channel) MRI images, with the same cap."""
    from conftest import TINY
    from eqdeq_cli.engine import trainer as trainer_module
    from eqdeq_cli.runs import train as run

    calls = []
    real = trainer_module.compared_images

    def spy(x_hat, x, data_range, *, complex_images=False):
        calls.append(complex_images)
        return real(x_hat, x, data_range, complex_images=complex_images)

    monkeypatch.setattr(trainer_module, "compared_images", spy)
    for channels, expected in ((2, True), (1, False)):
        calls.clear()
        overrides = [*TINY, "physics=mri", f"data.channels={channels}", "loss=supervised", "trainer.max_steps=1"]
        run.train(compose_cfg(overrides), run_dir=tmp_path / str(channels))
        assert calls == [expected]


def test_a_side_solve_leaves_warm_start_and_stats_alone():
    """The trainer's contraction measurement solves beside training: it must not change the
    solution the next training call starts from, nor the stats that step reports."""
    deq = DEQ(LinearMap(0.5), grad="jfb", forward_solver=BWD, warm_start=True).train()
    y = torch.randn(2, 1, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(4))
    deq(y)
    previous, recorded = deq._previous.clone(), deq.last_stats
    deq.pop_stats()
    deq.solve(2 * y, deq.fmap.prepare(2 * y), record=False)
    assert torch.equal(deq._previous, previous) and deq.last_stats is recorded and deq.pop_stats() == []
