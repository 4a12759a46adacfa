"""Ramp-filter preconditioning of the proximal-gradient map (``map.preconditioner=ramp``).

The weight ``P`` must be symmetric positive semi-definite (so the step is a gradient step on
``½‖Az − y‖²_P`` and the closed-form transpose is exact), must spread the eigenvalues of the
data term on the measured directions, and must leave the implicit gradient exact.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from eqdeq_cli.deq import DEQ, ProxGradMap, anderson_solve
from eqdeq_cli.physics import MRICartesian
from eqdeq_cli.physics.ct import CTRadon
from eqdeq_cli.physics.ct_geometry import FBP_FILTERS

DT = torch.float64


def dense(op, n: int, shape) -> np.ndarray:
    """The matrix of a linear map on images of ``shape`` (columns = images of the unit vectors)."""
    basis = torch.eye(n, dtype=DT).reshape((n,) + tuple(shape))
    return op(basis).reshape(n, -1).T.numpy()


@pytest.mark.parametrize("name", FBP_FILTERS)
def test_the_ramp_weight_is_symmetric_positive_semidefinite(name):
    ct = CTRadon(img_size=12, n_views=5, fbp_filter=name).to(DT)
    m = int(np.prod(ct.meas_shape))
    P = dense(ct.precondition, m, ct.meas_shape)
    assert np.abs(P - P.T).max() <= 1e-12 * np.abs(P).max()
    assert np.linalg.eigvalsh((P + P.T) / 2).min() >= -1e-12 * np.abs(P).max()


def test_fbp_is_the_back_projection_of_the_weighted_sinogram():
    ct = CTRadon(img_size=16, n_views=6).to(DT)
    y = ct.A(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=DT))
    assert torch.allclose(ct.A_dagger(y), ct.A_adjoint(ct.precondition(y)), rtol=0, atol=1e-12)


def test_ramp_preconditioning_spreads_the_eigenvalues_on_the_measured_directions():
    ct = CTRadon(img_size=32, n_views=11).to(DT)
    spectra = {}
    for name, op in (("plain", ct.AtA), ("ramp", ct.AtPA)):
        K = dense(op, 32 * 32, ct.img_shape)
        ev = np.linalg.eigvalsh((K + K.T) / 2)
        ev = ev / ev.max()
        spectra[name] = ev[ev > 1e-6]  # the measured directions
    # Without P about half of them get less than 5 % of the largest step; with P under a fifth.
    assert (spectra["ramp"] < 0.05).mean() <= 0.5 * (spectra["plain"] < 0.05).mean()
    assert np.median(spectra["ramp"]) >= 3 * np.median(spectra["plain"])


class Contractive(nn.Module):
    """``D(x) = x/2 + W₂ tanh(W₁ x)`` with ``‖W₁‖‖W₂‖ ≤ 1/4``: Lip(D) ≤ 3/4."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
                conv.weight.mul_(0.5 / (3 * conv.weight.norm()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x + self.conv2(torch.tanh(self.conv1(x)))


def make_problem(batch: int = 2):
    ct = CTRadon(img_size=10, n_views=5).to(DT)
    fmap = ProxGradMap(Contractive(), ct, preconditioner="ramp").to(DT)
    x = torch.rand(batch, 1, 10, 10, generator=torch.Generator().manual_seed(1), dtype=DT)
    return fmap, ct, ct.A(x)


def test_the_default_step_is_the_inverse_norm_of_the_preconditioned_normal_operator():
    fmap, ct, _ = make_problem()
    K = dense(ct.AtPA, 100, ct.img_shape)
    top = np.linalg.eigvalsh((K + K.T) / 2).max()
    # ‖AᵀPA‖ comes from 50 power iterations, which approach the top eigenvalue from below.
    assert float(fmap.step.detach()) == pytest.approx(1 / top, rel=1e-3)
    # At the largest allowed step the data step is non-expansive: eigenvalues of I − γK in [−1, 1].
    ev = np.linalg.eigvalsh(np.eye(100) - fmap.step_max * (K + K.T) / 2)
    assert ev.min() >= -1 - 1e-3 and ev.max() <= 1 + 1e-9


def test_the_preconditioned_step_is_a_gradient_step_on_the_weighted_data_term():
    fmap, ct, y = make_problem()
    ctx = fmap.prepare(y)
    z = torch.rand(y.shape[0], 1, 10, 10, generator=torch.Generator().manual_seed(2), dtype=DT).requires_grad_()
    r = ct.A(z) - y
    (grad,) = torch.autograd.grad(0.5 * (r * ct.precondition(r)).sum(), z)
    assert torch.allclose(fmap.data_step(z, ctx), z - fmap.step * grad, rtol=0, atol=1e-12)


def test_the_closed_form_transpose_of_the_preconditioned_step_equals_autograd():
    fmap, ct, y = make_problem()
    ctx = fmap.prepare(y)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(y.shape[0], 1, 10, 10, generator=g, dtype=DT).requires_grad_()
    w = torch.randn(z.shape, generator=g, dtype=DT)
    (auto,) = torch.autograd.grad(fmap.data_step(z, ctx), z, w)
    assert torch.allclose(fmap.data_step_vjp(w), auto, rtol=0, atol=1e-12)


def test_the_implicit_gradient_of_the_preconditioned_map_matches_long_unrolling():
    fmap, ct, y = make_problem()
    y = y.requires_grad_()
    w = torch.randn(y.shape[0], 1, 10, 10, generator=torch.Generator().manual_seed(4), dtype=DT)
    tight = lambda f, z0: anderson_solve(f, z0, max_iter=300, tol=1e-12)  # noqa: E731

    def loss(x):
        return (w * x).sum() + (ct.A(x) - y).pow(2).sum()

    deq = DEQ(fmap, grad="implicit", forward_solver=tight, backward_solver=tight)
    params = list(fmap.parameters()) + [y]
    got = torch.autograd.grad(loss(deq(y)), params)
    assert deq.last_stats.forward.converged.all()

    def unrolled(v):  # 200 tracked iterations from the fixed point
        ctx = fmap.prepare(v)
        with torch.no_grad():
            z, stats = tight(lambda u: fmap(u, ctx), fmap.init(v))
        assert stats.converged.all()
        for _ in range(200):
            z = fmap(z, ctx)
        return z

    ref = torch.autograd.grad(loss(unrolled(y)), params)
    a = torch.cat([g.reshape(-1) for g in got])
    b = torch.cat([g.reshape(-1) for g in ref])
    assert float((a - b).norm() / b.norm()) <= 1e-6


def test_a_preconditioned_solve_needs_fewer_iterations_on_the_measured_part():
    ct = CTRadon(img_size=32, n_views=11).to(DT)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5), dtype=DT)
    y = ct.A(x)
    residual = {}
    for name in ("none", "ramp"):
        fmap = ProxGradMap(nn.Identity(), ct, preconditioner=name).to(DT)
        ctx, z = fmap.prepare(y), fmap.init(y)
        with torch.no_grad():
            for _ in range(10):
                z = fmap(z, ctx)
        residual[name] = float((ct.A(z) - y).norm() / y.norm())
    assert residual["ramp"] < 0.5 * residual["none"]


def test_unknown_preconditioner_and_operators_without_one_are_refused():
    ct = CTRadon(img_size=8, n_views=3)
    with pytest.raises(ValueError, match=r"unknown preconditioner 'fbp'; valid: auto, none, ramp"):
        ProxGradMap(nn.Identity(), ct, preconditioner="fbp")
    mri = MRICartesian(img_size=8, acceleration=2, center_fraction=0.25)
    with pytest.raises(ValueError, match=r"preconditioner='ramp' needs a physics with a measurement weight "
                                         r"\(CT's ramp filter\); MRICartesian has none: use preconditioner=none or auto "
                                         r"\(map.preconditioner\)"):
        ProxGradMap(nn.Identity(), mri, preconditioner="ramp")


def test_the_ramp_weighted_mc_loss_is_the_weighted_norm_on_the_plain_terms_scale():
    from eqdeq_cli.losses import MCLoss

    ct = CTRadon(img_size=16, n_views=5).to(DT)
    g = torch.Generator().manual_seed(6)
    x1 = torch.rand(3, 1, 16, 16, generator=g, dtype=DT).requires_grad_()
    y = ct.A(torch.rand(3, 1, 16, 16, generator=g, dtype=DT))
    loss = MCLoss(preconditioner="ramp")
    value = loss(y=y, x1=x1, f=None, physics=ct)
    r = ct.A(x1) - y
    c = ct.mean_eigenvalue() / ct.mean_eigenvalue(preconditioned=True)
    assert loss.scale == pytest.approx(c, rel=1e-12)
    weighted = float((r * ct.precondition(r)).sum().detach())
    assert float(value.detach()) == pytest.approx(c * weighted / (3 * 256), rel=1e-10)
    # c is the ratio of the traces of AᵀA and AᵀPA (Hutchinson, 8 probes): on the plain term's scale.
    traces = [np.trace(dense(op, 256, ct.img_shape)) for op in (ct.AtA, ct.AtPA)]
    assert c == pytest.approx(traces[0] / traces[1], rel=0.15)
    # Its gradient is the preconditioned back-projection of the residual: 2c AᵀP r / (B n).
    (grad,) = torch.autograd.grad(value, x1)
    assert torch.allclose(grad, 2 * c * ct.A_adjoint(ct.precondition(r.detach())) / (3 * 256), rtol=0, atol=1e-12)


def test_the_ramp_weighted_mc_loss_is_refused_where_it_means_nothing():
    from eqdeq_cli.losses import MCLoss

    with pytest.raises(ValueError, match=r"MCLoss: unknown preconditioner 'fbp'; valid: auto, none, ramp"):
        MCLoss(preconditioner="fbp")
    mri = MRICartesian(img_size=8, acceleration=2, center_fraction=0.25)
    x1 = torch.zeros((1,) + mri.img_shape)
    with pytest.raises(ValueError, match=r"MCLoss: preconditioner='ramp' needs a physics with a measurement "
                                         r"weight \(CT's ramp filter\); MRICartesian has none"):
        MCLoss(preconditioner="ramp")(y=mri.A(x1), x1=x1, f=None, physics=mri)


def test_auto_preconditions_ct_and_leaves_other_operators_plain():
    from eqdeq_cli.losses import MCLoss

    ct = CTRadon(img_size=8, n_views=3)
    mri = MRICartesian(img_size=8, acceleration=2, center_fraction=0.25)
    assert ProxGradMap(nn.Identity(), ct, preconditioner="auto").preconditioner == "ramp"
    plain = ProxGradMap(nn.Identity(), mri, preconditioner="auto")
    assert plain.preconditioner == "none" and not plain.preconditioned
    x1 = torch.rand((2,) + mri.img_shape, generator=torch.Generator().manual_seed(7))
    y = mri.A(torch.rand_like(x1))
    auto = MCLoss(preconditioner="auto")(y=y, x1=x1, f=None, physics=mri)
    assert torch.equal(auto, MCLoss()(y=y, x1=x1, f=None, physics=mri))
    y = ct.A(torch.rand(2, 1, 8, 8))
    x1 = torch.rand(2, 1, 8, 8)
    assert torch.equal(MCLoss(preconditioner="auto")(y=y, x1=x1, f=None, physics=ct),
                       MCLoss(preconditioner="ramp")(y=y, x1=x1, f=None, physics=ct))


def test_a_preconditioned_map_with_a_plain_data_term_is_named_at_start_up():
    from eqdeq_cli.components import unweighted_data_terms
    from eqdeq_cli.losses import CompositeLoss, EILoss, MCLoss, SupervisedLoss, SURELoss

    ct = CTRadon(img_size=8, n_views=3)
    assert unweighted_data_terms(CompositeLoss(terms={"mc": MCLoss(preconditioner="auto"), "ei": EILoss()}), ct) == []
    assert unweighted_data_terms(CompositeLoss(terms={"sup": SupervisedLoss()}), ct) == []
    assert unweighted_data_terms(CompositeLoss(terms={"mc": MCLoss(), "ei": EILoss()}), ct) == ["mc"]
    assert unweighted_data_terms(CompositeLoss(terms={"sure": SURELoss(), "ei": EILoss()}), ct) == ["sure"]
    assert unweighted_data_terms(CompositeLoss(terms={"sure": SURELoss(preconditioner="auto")}), ct) == []
    assert unweighted_data_terms(CompositeLoss(terms={"mc": MCLoss(weight=0.0), "sup": SupervisedLoss()}), ct) == []


@pytest.mark.parametrize("name", FBP_FILTERS)
def test_the_trace_of_the_ramp_weight_is_exact(name):
    ct = CTRadon(img_size=12, n_views=5, fbp_filter=name, channels=2).to(DT)
    m = int(np.prod(ct.meas_shape))
    assert ct.precondition_trace() == pytest.approx(np.trace(dense(ct.precondition, m, ct.meas_shape)), rel=1e-10)
    mri = MRICartesian(img_size=8, acceleration=2, center_fraction=0.25)
    assert mri.precondition_trace() == int(np.prod(mri.meas_shape))  # the identity's


def test_an_operator_with_its_own_weight_must_give_its_trace():
    class Weighted(MRICartesian):
        has_preconditioner = True

        def precondition(self, r):
            return 2 * r

    with pytest.raises(NotImplementedError, match="Weighted defines precondition but not precondition_trace"):
        Weighted(img_size=8, acceleration=2, center_fraction=0.25).precondition_trace()


def test_sure_in_the_ramp_weighted_norm_is_unbiased():
    """E[estimate] = c·E‖A f(y) − A x‖²_P / n for Gaussian noise and a nonlinear f; the weighted MC
    term, which the same draws give, is biased by the noise (the test can see a bias)."""
    from eqdeq_cli.losses import MCLoss, SURELoss
    from eqdeq_cli.physics import GaussianNoise

    ct = CTRadon(img_size=8, n_views=3, noise=GaussianNoise(sigma=0.2)).to(DT)
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=DT)
    n_draws = 20000
    z = ct.A(x.expand(n_draws, 1, 8, 8))
    y = ct.noise(z, generator=torch.Generator().manual_seed(11))
    f = lambda v: ct.A_adjoint(0.4 * v + 0.3 * torch.tanh(2 * v))  # noqa: E731
    x1 = f(y)
    term = SURELoss(preconditioner="auto", tau=1e-4)
    est = term.per_sample(y=y, x1=x1, f=f, physics=ct, group=None, x=None,
                          generator=torch.Generator().manual_seed(12))
    c = ct.mean_eigenvalue() / ct.mean_eigenvalue(preconditioned=True)
    e = ct.A(x1) - z
    true = c * (e * ct.precondition(e)).flatten(1).sum(1) / 64
    diff = est - true
    mc_diff = MCLoss(preconditioner="ramp").per_sample(y=y, x1=x1, f=f, physics=ct, group=None, x=None,
                                                       generator=None) - true
    se, mc_se = (float(d.std()) / n_draws**0.5 for d in (diff, mc_diff))
    assert abs(float(diff.mean())) < 4 * se, (float(diff.mean()), se)
    assert abs(float(mc_diff.mean())) > 8 * mc_se


def test_sure_in_the_ramp_weighted_norm_refuses_poisson_noise():
    from eqdeq_cli.losses import SURELoss
    from eqdeq_cli.physics import PoissonNoise

    ct = CTRadon(img_size=8, n_views=3, noise=PoissonNoise(gain=0.01))
    x1 = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"^SURELoss: the ramp-weighted norm \(loss.terms.sure.preconditioner, 'auto' on "
                                         r"CT\) is available for Gaussian noise only, not PURE or PG-URE \(Poisson "
                                         r"noise\): set loss.terms.sure.preconditioner=none and "
                                         r"map.preconditioner=none$"):
        SURELoss(preconditioner="auto")(y=ct.A(x1), x1=x1, f=lambda v: ct.A_adjoint(v), physics=ct)
    plain = SURELoss(preconditioner="none")(y=ct.A(x1).clamp_min(0), x1=x1, f=lambda v: ct.A_adjoint(v),
                                            physics=ct, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(plain)


def test_a_ct_rei_run_with_poisson_noise_is_refused_before_its_first_step(compose_cfg, tmp_path, monkeypatch):
    from conftest import TINY

    from eqdeq_cli.runs import train as run

    calls = []
    original = DEQ.forward
    monkeypatch.setattr(DEQ, "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    cfg = compose_cfg([*TINY, "physics=ct", "physics/noise=poisson", "loss=rei", "trainer.max_steps=2"])
    with pytest.raises(ValueError, match=r"^SURELoss: the ramp-weighted norm .* set "
                                         r"loss.terms.sure.preconditioner=none and map.preconditioner=none$"):
        run.train(cfg, run_dir=tmp_path)
    assert calls == [] and not (tmp_path / "checkpoints").exists()  # refused at start-up, not in a step
