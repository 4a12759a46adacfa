"""Losses: hand computations on a tiny dense operator, gradient paths, unbiasedness of SURE."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eqdeq_cli.groups import Group, Rotations, Scalings, Shifts
from eqdeq_cli.losses import CompositeLoss, EILoss, MCLoss, SupervisedLoss, SURELoss
from eqdeq_cli.physics import DenseMatrixPhysics, GaussianNoise, NoiseModel, PoissonGaussianNoise, PoissonNoise

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "loss"
IMG = (1, 4, 4)
N = 16


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_physics(noise: NoiseModel | None = None, m: int = 6, positive: bool = False) -> DenseMatrixPhysics:
    M = torch.randn(m, N, generator=gen(42), dtype=torch.float64)
    if positive:
        M = M.abs() / N
    return DenseMatrixPhysics(M, IMG, noise=noise)


class FixedShift(Group):
    """A deterministic 'group sample': always the given per-sample shifts."""

    def __init__(self, shifts: torch.Tensor) -> None:
        self.shifts = shifts

    def sample(self, batch_size, generator=None, device=None, img_size=None):
        return self.shifts[:batch_size]

    def apply(self, x, g):
        return Shifts().apply(x, g)

    def apply_inverse(self, x, g):
        return Shifts().apply_inverse(x, g)


class UniformNoise(NoiseModel):
    def forward(self, y, generator=None):
        return y + torch.rand(y.shape, generator=generator, dtype=y.dtype)


def roll_each(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.roll(x[b], tuple(g[b].tolist()), dims=(-2, -1)) for b in range(x.shape[0])])


@pytest.fixture
def tiny():
    physics = make_physics()
    M = physics.matrix
    y = torch.randn(3, 6, generator=gen(1), dtype=torch.float64)
    f = lambda v: 0.5 * physics.A_adjoint(v)  # noqa: E731
    return physics, M, y, f


def test_mc_equals_hand_computation(tiny):
    physics, M, y, f = tiny
    r = (0.5 * y @ M) @ M.T - y
    expected = r.pow(2).sum(1).mean() / N
    total, logs = CompositeLoss(terms={"mc": MCLoss()})(f, y, physics, None)
    torch.testing.assert_close(total, expected)
    assert logs == {"mc": pytest.approx(float(expected)), "total": pytest.approx(float(expected))}


@pytest.mark.parametrize("add_noise", [False, True])
def test_ei_equals_hand_computation(tiny, add_noise):
    physics, M, y, f = tiny
    physics.noise = GaussianNoise(sigma=0.3)
    g = torch.tensor([[1, 0], [2, 3], [0, -1]])
    x1 = (0.5 * y @ M).reshape(3, *IMG)
    x2 = roll_each(x1, g)
    z2 = x2.reshape(3, -1) @ M.T
    if add_noise:  # the first draw from the generator (the fixed group draws nothing)
        z2 = z2 + 0.3 * torch.randn(z2.shape, generator=gen(7), dtype=z2.dtype)
    x3 = (0.5 * z2 @ M).reshape(3, *IMG)
    expected = (x3 - x2).pow(2).sum((1, 2, 3)).mean() / N
    loss = CompositeLoss(terms={"ei": EILoss(weight=0.25, add_noise=add_noise)})
    total, logs = loss(f, y, physics, FixedShift(g), generator=gen(7))
    torch.testing.assert_close(total, 0.25 * expected)
    assert logs["ei"] == pytest.approx(float(expected)) and logs["total"] == pytest.approx(0.25 * float(expected))


def test_supervised_and_composite_sum(tiny):
    physics, M, y, f = tiny
    x = torch.randn(3, *IMG, generator=gen(2), dtype=torch.float64)
    x1 = (0.5 * y @ M).reshape(3, *IMG)
    sup = (x1 - x).pow(2).sum((1, 2, 3)).mean() / N
    mc = ((x1.reshape(3, -1) @ M.T - y).pow(2).sum(1)).mean() / N
    loss = CompositeLoss(terms={"mc": MCLoss(weight=2.0), "supervised": SupervisedLoss(weight=0.5),
                                "skipped": MCLoss(weight=0.0)})
    assert loss.needs_ground_truth
    total, logs = loss(f, y, physics, None, x=x)
    torch.testing.assert_close(total, 2.0 * mc + 0.5 * sup)
    assert logs["supervised"] == pytest.approx(float(sup)) and logs["mc"] == pytest.approx(float(mc))
    assert "skipped" not in logs
    with pytest.raises(ValueError, match="supervised.*ground-truth"):
        loss(f, y, physics, None)


def test_reconstructor_is_called_once_for_mc_and_supervised(tiny):
    physics, _, y, f = tiny
    calls = []
    loss = CompositeLoss(terms={"mc": MCLoss(), "sup": SupervisedLoss()})
    loss(lambda v: calls.append(1) or f(v), y, physics, None, x=torch.zeros(3, *IMG, dtype=torch.float64))
    assert len(calls) == 1


def test_auto_weight_is_the_mean_eigenvalue_and_logged(tiny, caplog):
    physics, _, y, f = tiny
    term = EILoss()
    assert term.weight == "auto" and term.resolved_weight is None
    with caplog.at_level(logging.INFO, logger="eqdeq_cli.losses"):
        total, logs = CompositeLoss(terms={"ei": term})(f, y, physics, Shifts(), generator=gen(0))
    alpha = physics.mean_eigenvalue()
    assert term.resolved_weight == pytest.approx(alpha)
    assert alpha == pytest.approx(float(physics.matrix.pow(2).sum()) / N, rel=0.5)  # trace(AᵀA)/n, estimated
    assert float(total) == pytest.approx(alpha * logs["ei"])
    assert any("auto" in r.getMessage() for r in caplog.records)


def test_auto_weight_divides_by_the_energy_gain_of_a_shrinking_group(tiny, caplog):
    physics, _, y, f = tiny
    term = EILoss()
    with caplog.at_level(logging.INFO, logger="eqdeq_cli.losses"):
        CompositeLoss(terms={"ei": term})(f, y, physics, Scalings(factors=[0.5, 1.0]), generator=gen(0))
    assert term.resolved_weight == pytest.approx(physics.mean_eigenvalue() / 0.625)  # mean s² = (0.25 + 1) / 2
    assert any("energy gain" in r.getMessage() for r in caplog.records)


def ei_reference(theta, y, M, g, detach_x2):
    x1 = (theta * y @ M).reshape(3, *IMG)
    x2 = roll_each(x1, g)
    if detach_x2:
        x2 = x2.detach()
    x3 = (theta * (x2.reshape(3, -1) @ M.T) @ M).reshape(3, *IMG)
    return (x3 - x2).pow(2).sum((1, 2, 3)).mean() / N


@pytest.mark.parametrize("detach_x2", [False, True])
def test_ei_gradient_flows_through_x2_into_the_first_call(tiny, detach_x2):
    physics, M, y0, _ = tiny
    g = torch.tensor([[1, 2], [3, 0], [1, 1]])
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    y = y0.clone().requires_grad_()
    f = lambda v: theta * physics.A_adjoint(v)  # noqa: E731
    total, _ = CompositeLoss(terms={"ei": EILoss(weight=1.0, add_noise=False, detach_x2=detach_x2)})(
        f, y, physics, FixedShift(g))
    grads = torch.autograd.grad(total, (theta, y), allow_unused=True)
    theta_r = theta.detach().clone().requires_grad_()
    y_r = y0.clone().requires_grad_()
    ref = torch.autograd.grad(ei_reference(theta_r, y_r, M, g, detach_x2), (theta_r, y_r), allow_unused=True)
    torch.testing.assert_close(grads[0], ref[0])
    if detach_x2:
        assert grads[1] is None  # y reaches the EI term only through x2 = T_g f(y)
    else:
        torch.testing.assert_close(grads[1], ref[1])
        assert grads[1].abs().sum() > 0
        # and the first-call path matters: the θ-gradient differs from the detached one
        ref_detached = torch.autograd.grad(ei_reference(theta_r, y_r, M, g, True), theta_r)[0]
        assert not torch.allclose(grads[0], ref_detached)


def test_ei_noise_keeps_gradient_for_poisson(tiny):
    physics, _, y, _ = tiny
    physics.noise = PoissonNoise(gain=0.1)
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    f = lambda v: theta * physics.A_adjoint(v)  # noqa: E731
    term = EILoss(weight=1.0, detach_x2=True)
    value = CompositeLoss(terms={"ei": term})(f, y.abs(), physics, Shifts(), generator=gen(0))[0]
    (g,) = torch.autograd.grad(value, theta)
    assert torch.isfinite(g) and g != 0


def test_same_seed_same_loss_different_seed_different_loss(tiny):
    physics, _, y, f = tiny
    physics.noise = GaussianNoise(sigma=0.1)
    loss = CompositeLoss(terms={"ei": EILoss(weight=1.0), "sure": SURELoss()})
    a = loss(f, y, physics, Rotations(), generator=gen(3))[0]
    b = loss(f, y, physics, Rotations(), generator=gen(3))[0]
    c = loss(f, y, physics, Rotations(), generator=gen(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- SURE --------------------------------------------------------------------------------

def sure_check(physics, x, f, n_draws, seed, n_probes=1, tau=1e-4):
    """Per-draw (estimate − true error) and (MC − true error), all with the same clean x."""
    xs = x.expand(n_draws, *IMG)
    z = physics.A(xs)
    y = physics.noise(z, generator=gen(seed))
    x1 = f(y)
    term = SURELoss(tau=tau, n_probes=n_probes)
    est = term.per_sample(y=y, x1=x1, f=f, physics=physics, group=None, x=None, generator=gen(seed + 1))
    true = (physics.A(x1) - z).pow(2).sum(1) / N
    mc = (physics.A(x1) - y).pow(2).sum(1) / N
    return est - true, mc - true


def assert_unbiased(diff, mc_diff):
    se = diff.std() / diff.numel() ** 0.5
    assert abs(float(diff.mean())) < 4 * float(se), (float(diff.mean()), float(se))
    mc_se = mc_diff.std() / mc_diff.numel() ** 0.5
    assert abs(float(mc_diff.mean())) > 8 * float(mc_se)  # the check has the power to see a bias


def nonlinear_f(physics):
    return lambda v: physics.A_adjoint(0.4 * v + 0.3 * torch.tanh(2 * v))


def test_sure_gaussian_is_unbiased():
    physics = make_physics(GaussianNoise(sigma=0.3))
    x = torch.randn(1, *IMG, generator=gen(5), dtype=torch.float64)
    diff, mc_diff = sure_check(physics, x, nonlinear_f(physics), 40000, seed=11)
    assert_unbiased(diff, mc_diff)


def test_pure_poisson_is_unbiased():
    physics = make_physics(PoissonNoise(gain=0.05), positive=True)
    x = torch.rand(1, *IMG, generator=gen(5), dtype=torch.float64) + 0.5
    diff, mc_diff = sure_check(physics, x, lambda v: physics.A_adjoint(2.0 * v + 0.2 * torch.tanh(3 * v)), 40000,
                               seed=12)
    assert_unbiased(diff, mc_diff)


def test_pgure_poisson_gaussian_is_unbiased():
    physics = make_physics(PoissonGaussianNoise(gain=0.05, sigma=0.1), positive=True)
    x = torch.rand(1, *IMG, generator=gen(5), dtype=torch.float64) + 0.5
    f = lambda v: physics.A_adjoint(2.0 * v + 0.2 * torch.tanh(3 * v))  # noqa: E731
    diff, mc_diff = sure_check(physics, x, f, 40000, seed=13, tau=1e-3)
    assert_unbiased(diff, mc_diff)


@pytest.mark.parametrize("noise", [GaussianNoise(sigma=0.2), PoissonNoise(gain=0.1),
                                   PoissonGaussianNoise(gain=0.1, sigma=0.2)], ids=["sure", "pure", "pgure"])
def test_sure_equals_hand_computation(noise):
    physics = make_physics(noise)
    M = physics.matrix
    y = torch.randn(3, 6, generator=gen(1), dtype=torch.float64).abs()
    f = lambda v: physics.A_adjoint(0.5 * v + 0.1 * v**2)  # noqa: E731
    h = lambda v: (0.5 * v + 0.1 * v**2) @ M @ M.T  # noqa: E731  (= A f(v))
    tau, sigma2, gain, m = 1e-3, noise.sigma**2, noise.gain, 6
    b = torch.randn(y.shape, generator=gen(9), dtype=torch.float64)
    w = gain * y + sigma2
    if isinstance(noise, PoissonGaussianNoise):
        first = (w * b * (h(y + tau * b) - h(y - tau * b))).sum(1) / (2 * tau)
        second = 0.5 * ((b * b - 1) * (h(y + tau * b) + h(y - tau * b) - 2 * h(y))).sum(1) / tau**2
        deriv = first - gain * sigma2 * second
    else:
        deriv = (w * b * (h(y + tau * b) - h(y))).sum(1) / tau
    expected = ((h(y) - y).pow(2).sum(1) - m * sigma2 - gain * y.sum(1) + 2 * deriv).mean() / N
    total, logs = CompositeLoss(terms={"sure": SURELoss(tau=tau)})(f, y, physics, None, generator=gen(9))
    torch.testing.assert_close(total, expected)


def test_sure_probes_average():
    physics = make_physics(GaussianNoise(sigma=0.2))
    y = torch.randn(3, 6, generator=gen(1), dtype=torch.float64)
    f = lambda v: physics.A_adjoint(0.5 * v + 0.1 * v**2)  # noqa: E731
    x1 = f(y)
    one = SURELoss(n_probes=1).per_sample(y=y, x1=x1, f=f, physics=physics, group=None, x=None, generator=gen(0))
    g = gen(0)
    two_single = [SURELoss().per_sample(y=y, x1=x1, f=f, physics=physics, group=None, x=None, generator=g)
                  for _ in range(2)]
    two = SURELoss(n_probes=2).per_sample(y=y, x1=x1, f=f, physics=physics, group=None, x=None, generator=gen(0))
    torch.testing.assert_close(two, (two_single[0] + two_single[1]) / 2)
    assert not torch.allclose(two, one)


def test_sure_divergence_matches_exact_trace_for_linear_f():
    # h(y) = A·0.5·Aᵀ y is linear: div h = 0.5·trace(M Mᵀ) exactly for every probe average.
    physics = make_physics(GaussianNoise(sigma=0.2))
    M = physics.matrix
    y = torch.randn(2000, 6, generator=gen(3), dtype=torch.float64)
    f = lambda v: 0.5 * physics.A_adjoint(v)  # noqa: E731
    x1 = f(y)
    est = SURELoss(n_probes=1).per_sample(y=y, x1=x1, f=f, physics=physics, group=None, x=None, generator=gen(0))
    base = ((physics.A(x1) - y).pow(2).sum(1) - 6 * 0.04) / N
    div = (est - base) * N / (2 * 0.04)
    exact = 0.5 * torch.trace(M @ M.T)
    assert abs(float(div.mean() - exact)) < 4 * float(div.std()) / 2000**0.5


def test_pgure_derivative_estimates_match_exact_derivatives():
    # Identity operator and h(y) = c·y² elementwise: ∂ᵢhᵢ = 2c·yᵢ and ∂ᵢ²hᵢ = 2c exactly, so
    # PG-URE averaged over probes must approach its closed form, second-order term included.
    gain, sigma, c, n_draws = 0.5, 1.0, 0.3, 20000
    physics = DenseMatrixPhysics(torch.eye(N, dtype=torch.float64), IMG,
                                 noise=PoissonGaussianNoise(gain=gain, sigma=sigma))
    y0 = torch.rand(1, N, generator=gen(2), dtype=torch.float64) + 0.5
    y = y0.expand(n_draws, N)
    f = lambda v: (c * v**2).reshape(-1, *IMG)  # noqa: E731
    est = SURELoss(tau=1e-2).per_sample(y=y, x1=f(y), f=f, physics=physics, group=None, x=None, generator=gen(0))
    h = c * y0**2
    exact = ((h - y0).pow(2).sum() - gain * y0.sum() - N * sigma**2
             + 2 * ((gain * y0 + sigma**2) * 2 * c * y0).sum() - 2 * gain * sigma**2 * 2 * c * N) / N
    se = est.std() / n_draws**0.5
    assert abs(float(est.mean() - exact)) < 4 * float(se)
    assert 2 * gain * sigma**2 * 2 * c * N / N > 20 * float(se)  # the second-order term is resolved


def test_sure_without_noise_is_mc(tiny):
    physics, _, y, f = tiny
    x1 = f(y)
    est = SURELoss().forward(y=y, x1=x1, f=f, physics=physics)
    torch.testing.assert_close(est, MCLoss().forward(y=y, x1=x1, f=f, physics=physics))


def test_sure_unsupported_noise_is_a_clear_error(tiny):
    physics, _, y, f = tiny
    physics.noise = UniformNoise()
    with pytest.raises(ValueError, match="UniformNoise.*GaussianNoise"):
        CompositeLoss(terms={"sure": SURELoss()})(f, y, physics, None)


# ---- construction and configs --------------------------------------------------------------

def test_invalid_arguments():
    with pytest.raises(ValueError, match="weight"):
        MCLoss(weight=-1.0)
    with pytest.raises(ValueError, match="number ≥ 0, got 'auto'"):
        MCLoss(weight="auto")
    with pytest.raises(ValueError, match="'auto'"):
        EILoss(weight="automatic")
    with pytest.raises(ValueError, match="tau"):
        SURELoss(tau=0.0)
    with pytest.raises(ValueError, match="n_probes"):
        SURELoss(n_probes=0)
    with pytest.raises(ValueError, match="at least one term"):
        CompositeLoss(terms={})
    with pytest.raises(ValueError, match="LossTerm"):
        CompositeLoss(terms={"mc": torch.nn.MSELoss()})
    with pytest.raises(TypeError):
        EILoss(detach=True)


def test_ei_without_group_is_a_clear_error(tiny):
    physics, _, y, f = tiny
    with pytest.raises(ValueError, match="symmetry group"):
        CompositeLoss(terms={"ei": EILoss(weight=1.0)})(f, y, physics, None)


@pytest.mark.parametrize("name,terms,gt", [("ei", {"mc": MCLoss, "ei": EILoss}, False),
                                           ("rei", {"sure": SURELoss, "ei": EILoss}, False),
                                           ("mc", {"mc": MCLoss}, False),
                                           ("supervised", {"supervised": SupervisedLoss}, True)])
def test_configs(name, terms, gt):
    loss = instantiate(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert isinstance(loss, CompositeLoss) and loss.needs_ground_truth == gt
    assert {k: type(v) for k, v in loss.terms.items()} == terms


def test_config_overrides_reach_the_terms():
    cfg = OmegaConf.load(CONFIGS / "ei.yaml")
    assert cfg.terms.ei.weight == "auto"
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(["terms.ei.weight=0.05", "terms.ei.detach_x2=true"]))
    loss = instantiate(cfg)
    assert loss.terms.ei.resolved_weight == 0.05 and loss.terms.ei.detach_x2
    bad = OmegaConf.merge(cfg, OmegaConf.from_dotlist(["terms.ei.wieght=0.05"]))
    with pytest.raises(Exception, match="wieght"):
        instantiate(bad)
