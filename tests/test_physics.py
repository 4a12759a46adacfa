"""Generic properties every operator must have, and the physics configs."""
from __future__ import annotations

import os
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from eqdeq_cli.physics import (CTRadon, DenseMatrixPhysics, GaussianNoise, Inpainting, LinearPhysics,
                               MRICartesian, NoNoise, PoissonGaussianNoise, PoissonNoise)

CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "configs")


def _dense() -> DenseMatrixPhysics:
    g = torch.Generator().manual_seed(3)
    return DenseMatrixPhysics(torch.randn(20, 2 * 4 * 4, generator=g, dtype=torch.float64), img_shape=(2, 4, 4))


# name -> (factory, has ‖A‖ = 1)
OPERATORS = {
    "ct": (lambda: CTRadon(img_size=16, n_views=9), True),
    "ct_2ch_360": (lambda: CTRadon(img_size=13, channels=2, n_views=7, angle_range=360.0, n_detectors=15), True),
    "ct_unnormalized": (lambda: CTRadon(img_size=12, n_views=5, normalize=False), False),
    "mri_random_1ch": (lambda: MRICartesian(img_size=16, channels=1, mask="random"), True),
    "mri_random_2ch": (lambda: MRICartesian(img_size=16, channels=2, mask="random"), True),
    "mri_equispaced_1ch": (lambda: MRICartesian(img_size=15, channels=1, mask="equispaced", seed=2), True),
    "mri_equispaced_2ch": (lambda: MRICartesian(img_size=16, channels=2, mask="equispaced"), True),
    "mri_gaussian_1ch": (lambda: MRICartesian(img_size=16, channels=1, mask="gaussian", seed=1), True),
    "mri_gaussian_2ch": (lambda: MRICartesian(img_size=17, channels=2, mask="gaussian"), True),
    "inpainting": (lambda: Inpainting(img_size=10, channels=3, keep_fraction=0.6), True),
    "dense": (_dense, False),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
ADJOINT_TOL = {torch.float32: 1e-4, torch.float64: 1e-5}


@pytest.fixture(scope="module", params=sorted(OPERATORS))
def op_entry(request):
    factory, unit_norm = OPERATORS[request.param]
    return request.param, factory(), unit_norm


@pytest.fixture(params=sorted(DTYPES))
def dtype(request) -> torch.dtype:
    return DTYPES[request.param]


def _randn(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def test_adjoint_dot_product(op_entry, dtype):
    _, op, _ = op_entry
    x = _randn((3,) + tuple(op.img_shape), dtype, 0)
    y = _randn((3,) + tuple(op.meas_shape), dtype, 1)
    lhs = (op.A(x) * y).sum(dtype=torch.float64)
    rhs = (x * op.A_adjoint(y)).sum(dtype=torch.float64)
    scale = op.A(x).norm().double() * y.norm().double()
    assert abs(lhs - rhs) / scale <= ADJOINT_TOL[dtype]


def test_linearity(op_entry, dtype):
    _, op, _ = op_entry
    x1, x2 = _randn((2,) + tuple(op.img_shape), dtype, 2), _randn((2,) + tuple(op.img_shape), dtype, 3)
    a, b = 1.7, -0.4
    lhs, rhs = op.A(a * x1 + b * x2), a * op.A(x1) + b * op.A(x2)
    assert torch.allclose(lhs, rhs, rtol=0, atol=ADJOINT_TOL[dtype] * rhs.abs().max().item())


def test_shapes_and_dtype(op_entry, dtype):
    _, op, _ = op_entry
    x = _randn((2,) + tuple(op.img_shape), dtype, 4)
    y = op.A(x)
    assert y.shape == (2,) + tuple(op.meas_shape) and y.dtype == dtype
    assert op.A_adjoint(y).shape == x.shape and op.A_adjoint(y).dtype == dtype
    assert op.A_dagger(y).shape == x.shape and op.A_dagger(y).dtype == dtype
    assert op(x).shape == y.shape


def test_norm_is_one_when_normalised(op_entry):
    _, op, unit_norm = op_entry
    if not unit_norm:
        pytest.skip("operator is not normalised")
    assert op.norm(n_iter=40) == pytest.approx(1.0, abs=1e-3)


def test_wrong_image_shape_names_expected_shape(op_entry):
    _, op, _ = op_entry
    c, h, w = op.img_shape
    bad = torch.zeros(1, c, h + 1, w)
    with pytest.raises(ValueError, match=re.escape(f"(B, {c}, {h}, {w})")):
        op.A(bad)
    bad_y = torch.zeros((1,) + tuple(s + 1 for s in op.meas_shape))
    expected = "(B, " + ", ".join(map(str, op.meas_shape)) + ")"
    with pytest.raises(ValueError, match=re.escape(expected)):
        op.A_adjoint(bad_y)


def test_gradient_of_A_is_adjoint(op_entry):
    """Autograd through ``A`` gives ``Aᵀ`` (and through ``Aᵀ`` gives ``A``)."""
    _, op, _ = op_entry
    x = _randn((2,) + tuple(op.img_shape), torch.float64, 5).requires_grad_(True)
    y = _randn((2,) + tuple(op.meas_shape), torch.float64, 6).requires_grad_(True)
    (gx,) = torch.autograd.grad((op.A(x) * y.detach()).sum(), x)
    (gy,) = torch.autograd.grad((op.A_adjoint(y) * x.detach()).sum(), y)
    assert torch.allclose(gx, op.A_adjoint(y.detach()), atol=1e-10)
    assert torch.allclose(gy, op.A(x.detach()), atol=1e-10)


@pytest.mark.parametrize("gamma", [0.3, 2.0])
def test_prox_data_optimality(op_entry, gamma):
    r"""``x = prox`` solves ``AᵀA x − Aᵀy + (x − z)/γ = 0`` (closed forms and the CG default)."""
    _, op, _ = op_entry
    z = _randn((2,) + tuple(op.img_shape), torch.float64, 7)
    y = _randn((2,) + tuple(op.meas_shape), torch.float64, 8)
    x = op.prox_data(z, y, gamma, n_iter=200, tol=1e-12)
    residual = op.AtA(x) - op.A_adjoint(y) + (x - z) / gamma
    assert residual.norm() / (op.A_adjoint(y).norm() + z.norm() / gamma) < 1e-8


def test_prox_data_per_sample_gamma(op_entry):
    _, op, _ = op_entry
    z = _randn((2,) + tuple(op.img_shape), torch.float64, 9)
    y = _randn((2,) + tuple(op.meas_shape), torch.float64, 10)
    gamma = torch.tensor([0.5, 3.0], dtype=torch.float64).view(2, 1, 1, 1)
    x = op.prox_data(z, y, gamma, n_iter=200, tol=1e-12)
    for i in range(2):
        xi = op.prox_data(z[i:i + 1], y[i:i + 1], float(gamma[i]), n_iter=200, tol=1e-12)
        assert torch.allclose(x[i:i + 1], xi, atol=1e-8)


def test_operators_run_in_float32_under_bf16_autocast(op_entry):
    # Under trainer.bf16=true only the network runs in bfloat16: the operators (sparse
    # products, FFTs) see float32, a bfloat16 input promoted, and give the float32 result.
    _, op, _ = op_entry
    x = _randn((2,) + tuple(op.img_shape), torch.float32, 13).bfloat16()
    y = _randn((2,) + tuple(op.meas_shape), torch.float32, 14).bfloat16()
    ref = (op.A(x.float()), op.A_adjoint(y.float()), op.A_dagger(y.float()), op.precondition(y.float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = (op.A(x), op.A_adjoint(y), op.A_dagger(y), op.precondition(y))
        assert torch.is_autocast_enabled("cpu")
    for r, o in zip(ref, out):
        assert o.dtype == torch.float32
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_gpu_parity(op_entry, dtype):
    _, op, _ = op_entry
    x = _randn((2,) + tuple(op.img_shape), dtype, 11)
    y = _randn((2,) + tuple(op.meas_shape), dtype, 12)
    ref = (op.A(x), op.A_adjoint(y), op.A_dagger(y))
    gpu = op.to("cuda")
    try:
        out = (gpu.A(x.cuda()), gpu.A_adjoint(y.cuda()), gpu.A_dagger(y.cuda()))
    finally:
        op.to("cpu")
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for r, o in zip(ref, out):
        assert o.device.type == "cuda"
        assert torch.allclose(r, o.cpu(), atol=tol * r.abs().max().item())


def test_operators_are_linear_physics():
    for factory, _ in OPERATORS.values():
        assert isinstance(factory(), LinearPhysics)


# -- configs -----------------------------------------------------------------------
def _compose(overrides: list[str]):
    with initialize_config_dir(os.path.abspath(CONFIG_DIR), version_base=None):
        return compose(config_name=None, overrides=overrides)


NOISE_CLASSES = {"none": NoNoise, "gaussian": GaussianNoise, "poisson": PoissonNoise,
                 "poisson_gaussian": PoissonGaussianNoise}


@pytest.mark.parametrize("name, cls, channels", [("ct", CTRadon, 1), ("mri", MRICartesian, 2),
                                                 ("inpainting", Inpainting, 3)])
@pytest.mark.parametrize("noise", sorted(NOISE_CLASSES))
def test_physics_config_builds(name, cls, channels, noise):
    cfg = _compose([f"+physics={name}", f"physics/noise={noise}", "+data.img_size=16",
                    f"+data.channels={channels}"])
    op = instantiate(cfg.physics)
    assert type(op) is cls and type(op.noise) is NOISE_CLASSES[noise]
    assert op.img_shape == (channels, 16, 16)


def test_physics_config_defaults():
    ct = instantiate(_compose(["+physics=ct", "+data.img_size=16", "+data.channels=1"]).physics)
    assert ct.n_views == 25 and ct.n_detectors == 23 and ct.fbp_filter == "ram-lak"
    assert isinstance(ct.noise, GaussianNoise) and ct.noise.sigma == pytest.approx(0.002)
    mri = instantiate(_compose(["+physics=mri", "+data.img_size=50", "+data.channels=1"]).physics)
    assert mri.acceleration == pytest.approx(4.0, rel=0.05) and mri.mask_source == "random"
    inp = instantiate(_compose(["+physics=inpainting", "+data.img_size=10", "+data.channels=1"]).physics)
    assert inp.mask.sum().item() == 70 and inp.noise.sigma == pytest.approx(0.01)


def test_physics_config_noise_overrides():
    cfg = _compose(["+physics=ct", "physics.noise.sigma=0.05", "physics.n_views=7",
                    "+data.img_size=16", "+data.channels=1"])
    ct = instantiate(cfg.physics)
    assert ct.noise.sigma == 0.05 and ct.meas_shape == (1, 7, 23)
    cfg = _compose(["+physics=ct", "physics/noise=poisson", "physics.noise.gain=0.5",
                    "+data.img_size=16", "+data.channels=1"])
    assert instantiate(cfg.physics).noise.gain == 0.5
    cfg = _compose(["+physics=mri", "+physics.misspelt=1", "+data.img_size=16", "+data.channels=1"])
    with pytest.raises(Exception, match="misspelt"):
        instantiate(cfg.physics)
