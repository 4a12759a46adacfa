"""Analysis functions measure the properties they claim, on maps whose answer is known."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqdeq_cli.analysis import (convergence_rate, equivariance_error, identifiability, identifiability_warning,
                                jacobian_asymmetry, jacobian_spectrum, lipschitz_estimate,
                                measure_then_reconstruct, nullspace_component, spectral_norm_per_sample)
from eqdeq_cli.groups.base import Group
from eqdeq_cli.physics import CTRadon, DenseMatrixPhysics, Inpainting, MRICartesian


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- small groups, independent of eqdeq_cli.groups ----------------------------------------
class CircShifts(Group):
    def sample(self, batch_size, generator=None, device=None):
        return torch.randint(0, 1 << 16, (batch_size, 2), generator=generator).to(device)

    def apply(self, x, g):
        return torch.stack([torch.roll(x[i], (int(g[i, 0]), int(g[i, 1])), dims=(-2, -1)) for i in range(len(x))])

    def apply_inverse(self, x, g):
        return self.apply(x, -g)


class Rot90(Group):
    def sample(self, batch_size, generator=None, device=None):
        return torch.randint(1, 4, (batch_size,), generator=generator).to(device)  # never the identity

    def apply(self, x, g):
        return torch.stack([torch.rot90(x[i], int(g[i]), dims=(-2, -1)) for i in range(len(x))])

    def apply_inverse(self, x, g):
        return self.apply(x, -g)


class ContinuousRotations(Group):
    """Rotation by a uniform angle in [0°, 360°), bilinear, zero outside the image."""

    def sample(self, batch_size, generator=None, device=None):
        return (torch.rand(batch_size, generator=generator, dtype=torch.float64) * 2 * math.pi).to(device)

    def apply(self, x, g):
        c, s = torch.cos(g).to(x.dtype), torch.sin(g).to(x.dtype)
        z = torch.zeros_like(c)
        theta = torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def apply_inverse(self, x, g):
        return self.apply(x, -g)


def circ_conv(kernel: torch.Tensor):
    k = kernel.view(1, 1, *kernel.shape)
    r = kernel.shape[-1] // 2
    return lambda x: F.conv2d(F.pad(x, (r, r, r, r), mode="circular"), k.to(x.dtype))


# -- equivariance --------------------------------------------------------------------------
def test_equivariance_error_zero_for_equivariant_maps_and_large_otherwise():
    x = torch.rand(3, 1, 12, 12, generator=gen(0), dtype=torch.float64)
    k = torch.randn(3, 3, generator=gen(1), dtype=torch.float64)
    sym_k = torch.tensor([[0.1, 0.2, 0.1], [0.2, 0.5, 0.2], [0.1, 0.2, 0.1]], dtype=torch.float64)
    assert equivariance_error(torch.tanh, CircShifts(), x, generator=gen(2))["max"] < 1e-12
    assert equivariance_error(torch.tanh, Rot90(), x, generator=gen(2))["max"] < 1e-12
    assert equivariance_error(circ_conv(k), CircShifts(), x, generator=gen(2))["max"] < 1e-12
    assert equivariance_error(circ_conv(sym_k), Rot90(), x, generator=gen(2))["max"] < 1e-12
    # not equivariant: a generic kernel under rotations, a position-dependent gain under shifts
    assert equivariance_error(circ_conv(k), Rot90(), x, generator=gen(2))["mean"] > 0.1
    ramp = torch.linspace(0.0, 1.0, 12, dtype=torch.float64).view(1, 1, 1, 12)
    res = equivariance_error(lambda t: t * ramp, CircShifts(), x, n_elements=5, generator=gen(2))
    assert res["mean"] > 0.1
    assert len(res["per_element"]) == 5 and len(res["per_sample"]) == 3
    assert res == equivariance_error(lambda t: t * ramp, CircShifts(), x, n_elements=5, generator=gen(2))


def test_equivariance_of_a_reconstructor_through_its_measurements():
    mri = MRICartesian(img_size=16, channels=2)
    x = torch.rand(2, 2, 16, 16, generator=gen(3))
    recon = measure_then_reconstruct(mri.A_dagger, mri)  # x ↦ A†A x, the projection on range(Aᵀ)
    assert equivariance_error(recon, CircShifts(), x, generator=gen(4))["max"] < 1e-5
    assert equivariance_error(recon, Rot90(), x, generator=gen(4))["mean"] > 0.05


# -- Jacobian symmetry and spectrum --------------------------------------------------------
def test_jacobian_asymmetry_vanishes_for_a_gradient_map_and_not_for_a_generic_conv():
    k = torch.randn(4, 1, 3, 3, generator=gen(5), dtype=torch.float64)

    def prox_like(x):  # x − ∇h(x), h(x) = Σ softplus(K x): Jacobian I − Kᵀ diag(σ') K, symmetric
        return x - 0.3 * F.conv_transpose2d(torch.sigmoid(F.conv2d(x, k, padding=1)), k, padding=1)

    x = torch.randn(2, 1, 10, 10, generator=gen(6), dtype=torch.float64)
    sym = jacobian_asymmetry(prox_like, x, n_probes=4, generator=gen(7), n_power_iter=0)
    assert sym["max"] < 1e-10 and sym["frobenius"]["max"] < 1e-10
    assert "spectrum" not in sym and len(sym["per_probe"]) == 4
    kernel = torch.randn(1, 1, 3, 3, generator=gen(8), dtype=torch.float64)
    conv = jacobian_asymmetry(lambda t: torch.tanh(F.conv2d(t, kernel, padding=1)), x, n_probes=4,
                              generator=gen(7), n_power_iter=0)
    assert conv["mean"] > 0.05 and conv["frobenius"]["min"] > 0.2
    anti = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    res = jacobian_asymmetry(lambda t: (t.flatten(1) @ anti.T).view_as(t), torch.randn(3, 1, 1, 2, dtype=torch.float64),
                             n_probes=16, generator=gen(9), n_power_iter=0)
    assert res["frobenius"]["mean"] == pytest.approx(1.0, abs=1e-12)


def _linear(matrix: torch.Tensor):
    return lambda t: (t.flatten(1) @ matrix.T).view_as(t)


def test_jacobian_spectrum_of_known_matrices():
    n = 16
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen(10), dtype=torch.float64))
    eig = torch.cat([torch.tensor([0.9, -0.5], dtype=torch.float64),
                     torch.linspace(-0.2, 0.3, n - 2, dtype=torch.float64)])
    sym = q @ torch.diag(eig) @ q.T
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    spec = jacobian_spectrum(_linear(sym), x, n_iter=40, generator=gen(11))
    assert spec["sym_max"]["mean"] == pytest.approx(0.9, abs=1e-3)
    assert spec["sym_min"]["mean"] == pytest.approx(-0.5, abs=1e-3)
    assert spec["spectral_radius"]["mean"] == pytest.approx(0.9, abs=2e-2)
    assert spec["spectral_norm"]["mean"] == pytest.approx(0.9, abs=1e-3)
    # a scaled rotation block dominates: complex eigenvalues 0.8·e^{±i·1.1}, symmetric part 0.8·cos 1.1
    rot = torch.zeros(n, n, dtype=torch.float64)
    rot[:2, :2] = 0.8 * torch.tensor([[math.cos(1.1), -math.sin(1.1)], [math.sin(1.1), math.cos(1.1)]])
    rot[2:, 2:] = torch.diag(torch.linspace(0.05, 0.2, n - 2, dtype=torch.float64))
    spec = jacobian_spectrum(_linear(rot), x, n_iter=40, generator=gen(12))
    assert spec["spectral_radius"]["mean"] == pytest.approx(0.8, rel=2e-2)
    assert spec["spectral_norm"]["mean"] == pytest.approx(0.8, rel=1e-3)
    assert spec["sym_max"]["mean"] == pytest.approx(0.8 * math.cos(1.1), abs=1e-3)


def test_eigenvalue_range_separates_ends_of_equal_magnitude():
    """Eigenvalues ±1 (and ±0.99): power iteration cannot tell the two ends apart and stalls
    between them ([−0.88, 0.67] whatever the iteration count); the range must be [−1, 1]."""
    n = 16
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen(20), dtype=torch.float64))
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    for low, high in ((-1.0, 1.0), (-0.99, 1.0), (-1.0, 0.99)):
        eig = torch.cat([torch.tensor([high, low], dtype=torch.float64),
                         torch.linspace(-0.5, 0.5, n - 2, dtype=torch.float64)])
        spec = jacobian_spectrum(_linear(q @ torch.diag(eig) @ q.T), x, n_iter=20, generator=gen(21))
        assert spec["sym_max"]["min"] == pytest.approx(high, abs=1e-6)
        assert spec["sym_min"]["max"] == pytest.approx(low, abs=1e-6)


# -- contraction ---------------------------------------------------------------------------
def test_lipschitz_estimate_matches_spectral_norm_of_circular_convolution():
    kernel = torch.randn(3, 3, generator=gen(13), dtype=torch.float64)
    padded = torch.zeros(8, 8, dtype=torch.float64)
    padded[:3, :3] = kernel
    sigma = float(torch.fft.fft2(padded).abs().max())
    scales = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64).view(3, 1, 1, 1)
    conv = circ_conv(kernel)
    z = torch.randn(3, 1, 8, 8, generator=gen(14), dtype=torch.float64)
    per_sample = spectral_norm_per_sample(lambda t: scales * conv(t), z, n_iter=50, generator=gen(15))
    assert torch.allclose(per_sample, scales.flatten() * sigma, rtol=1e-3)
    assert lipschitz_estimate(lambda t: scales * conv(t), z, n_iter=50, generator=gen(15)) == \
        pytest.approx(2 * sigma, rel=1e-3)


def test_lipschitz_estimate_of_a_deq_map_at_a_point_matches_its_jacobian():
    from eqdeq_cli.deq.maps import ProxGradMap

    torch.manual_seed(0)
    physics = DenseMatrixPhysics(torch.randn(10, 16, generator=gen(16), dtype=torch.float64), img_shape=(1, 4, 4))
    denoiser = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1)).double()
    fmap = ProxGradMap(denoiser, physics)
    y = physics.A(torch.rand(1, 1, 4, 4, generator=gen(17), dtype=torch.float64))
    ctx = fmap.prepare(y)
    z = fmap.init(y).detach()
    jac = torch.autograd.functional.jacobian(lambda t: fmap(t.view(1, 1, 4, 4), ctx).flatten(), z.flatten())
    expected = float(torch.linalg.matrix_norm(jac, ord=2))
    assert lipschitz_estimate(lambda t: fmap(t, ctx), z, n_iter=100, generator=gen(18)) == \
        pytest.approx(expected, rel=1e-4)
    assert all(p.grad is None for p in fmap.parameters())  # analysis leaves gradients alone


def test_convergence_rate():
    assert convergence_rate([3.0 * 0.5**k for k in range(10)]) == pytest.approx(0.5)
    assert convergence_rate([100.0, 1.0] + [0.9**k for k in range(1, 6)], skip=1) == pytest.approx(0.9)
    assert convergence_rate([1.0, 0.1, 0.0]) == 0.0
    assert math.isnan(convergence_rate([1.0]))
    from eqdeq_cli.deq.solvers import fixed_point_solve

    b = torch.randn(2, 5, generator=gen(19), dtype=torch.float64)
    _, stats = fixed_point_solve(lambda t: 0.6 * t + b, torch.zeros_like(b), max_iter=30, tol=0.0)
    assert convergence_rate(stats.history, skip=2) == pytest.approx(0.6, abs=0.02)


# -- identifiability -----------------------------------------------------------------------
def test_nullspace_component_uses_a_projection_only_when_it_is_one():
    w = torch.randn(2, 1, 16, 16, generator=gen(20), dtype=torch.float64)
    ct = CTRadon(img_size=16, n_views=6)
    fbp_leak = float((ct.A(w - ct.A_dagger(ct.A(w))).norm() / ct.A(w).norm()))
    assert fbp_leak > 0.1  # FBP is not a pseudo-inverse: w − FBP(A w) is far from the nullspace
    v, method, leak = nullspace_component(ct, w)
    assert method == "least_squares" and float(leak.max()) < 1e-2 and float(v.norm()) > 0.1 * float(w.norm())
    inp = Inpainting(img_size=16)
    v, method, leak = nullspace_component(inp, w)
    assert method == "A_dagger" and float(leak.max()) == 0.0


def test_identifiability_warns_for_mri_with_shifts_and_names_a_group_that_works():
    mri = MRICartesian(img_size=16, channels=2)
    report = identifiability(mri, CircShifts(), generator=gen(21))
    assert not report["identifiable"] and report["rho_mean"] < 1e-6 and report["nullspace_fraction"] > 0.3
    msg = identifiability_warning(mri, CircShifts(), generator=gen(21),
                                  alternatives={"rotations": ContinuousRotations(), "shifts": CircShifts()})
    assert msg is not None and "CircShifts" in msg and "equivariant" in msg and "nullspace" in msg
    assert "rotations (ρ =" in msg and "shifts (ρ" not in msg


@pytest.mark.parametrize("physics,group", [
    (CTRadon(img_size=16, n_views=6), ContinuousRotations()),
    (Inpainting(img_size=16), CircShifts()),
    (MRICartesian(img_size=16, channels=2), ContinuousRotations()),
], ids=["ct-rotations", "inpainting-shifts", "mri-rotations"])
def test_identifiability_no_warning_when_the_group_moves_the_nullspace(physics, group):
    report = identifiability(physics, group, generator=gen(22))
    assert report["identifiable"] and report["reliable"] and report["rho_mean"] > 0.2
    assert identifiability_warning(physics, group, generator=gen(22), report=report) is None


def test_ct_with_an_even_number_of_views_is_equivariant_to_quarter_turns():
    # views at multiples of 180°/n: a quarter turn permutes them when n is even
    report = identifiability(CTRadon(img_size=16, n_views=6), Rot90(), generator=gen(23))
    assert not report["identifiable"] and report["rho_mean"] <= 2 * report["leakage"] + 1e-3


def test_identifiability_with_the_built_in_groups():
    groups = pytest.importorskip("eqdeq_cli.groups")
    if not all(hasattr(groups, n) for n in ("Shifts", "Rotations")):
        pytest.skip("built-in Shifts/Rotations groups not available yet")
    mri = MRICartesian(img_size=16, channels=2)
    msg = identifiability_warning(mri, groups.Shifts(), generator=gen(24))
    assert msg is not None and "rotations" in msg.lower()
    assert identifiability_warning(CTRadon(img_size=16, n_views=6), groups.Rotations(), generator=gen(24)) is None
    assert identifiability_warning(Inpainting(img_size=16), groups.Shifts(), generator=gen(24)) is None


def test_quarter_turns_with_an_even_number_of_ct_views_are_caught_and_continuous_angles_advised():
    from eqdeq_cli.groups import Rotations

    quarter = Rotations(exact=True)  # configs/group/rotations.yaml
    assert identifiability_warning(CTRadon(img_size=16, n_views=7), quarter, generator=gen(25)) is None
    msg = identifiability_warning(CTRadon(img_size=16, n_views=6), quarter, generator=gen(25))
    assert msg is not None and "Use a group A is not equivariant to: group=rotations group.exact=false (ρ = " in msg
    assert "group=rotations (ρ" not in msg  # the group that failed is not offered again
