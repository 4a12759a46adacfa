"""Denoisers: shapes, identity at initialisation, operator-norm bound of spectral normalisation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from eqdeq_cli.models import DnCNN, UNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


def conv_operator_norm_estimate(conv: nn.Conv2d, size: int, n_iter: int = 100) -> float:
    """Power iteration on x ↦ convᵀ(conv(x)) (no bias) on a size×size image."""
    w = conv.weight.detach().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, w.shape[1], size, size, generator=g, dtype=torch.float64)
    for _ in range(n_iter):
        x = F.conv_transpose2d(F.conv2d(x, w, padding=conv.padding), w, padding=conv.padding)
        x = x / x.norm()
    return float(F.conv2d(x, w, padding=conv.padding).norm())


def lipschitz_lower_bound(f: nn.Module, shape: tuple[int, ...], n_steps: int = 60) -> float:
    """Largest ‖f(a) − f(b)‖/‖a − b‖ found by gradient ascent from a random pair."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    d = (0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    opt = torch.optim.Adam([a, d], lr=0.05)
    best = 0.0
    for _ in range(n_steps):
        ratio = (f(a + d) - f(a)).norm() / d.norm()
        best = max(best, ratio.item())
        opt.zero_grad()
        (-ratio).backward()
        opt.step()
    return best


MODELS = [
    lambda **kw: DnCNN(channels=2, depth=3, width=8, **kw),
    lambda **kw: UNet(channels=2, width=4, levels=1, **kw),
]


@pytest.mark.parametrize("make", MODELS, ids=["dncnn", "unet"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(16, 16), (13, 10)])
def test_shape_dtype_and_identity_at_init(make, dtype, size):
    torch.manual_seed(0)
    model = make().to(dtype)
    x = torch.randn(3, 2, *size, dtype=dtype)
    out = model(x)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.equal(out, x), "residual + zero_init_last must start as the identity"


@pytest.mark.parametrize("make", MODELS, ids=["dncnn", "unet"])
def test_without_zero_init_the_network_is_not_the_identity_and_trains(make):
    torch.manual_seed(0)
    model = make(zero_init_last=False)
    x = torch.randn(2, 2, 16, 16)
    out = model(x)
    assert not torch.allclose(out, x)
    out.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_zero_init_still_gives_gradients_to_the_last_layer():
    torch.manual_seed(0)
    model = DnCNN(channels=1, depth=3, width=4)
    x = torch.randn(2, 1, 8, 8)
    (model(x) - 2 * x).pow(2).sum().backward()
    last = model.net[-1]
    assert last.weight.grad.abs().sum() > 0


def test_non_residual_outputs_the_branch():
    torch.manual_seed(0)
    model = DnCNN(channels=1, depth=3, width=4, residual=False, zero_init_last=False)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x), model.net(x))


def test_parameter_counts():
    # DnCNN: C→w, (depth−2)×(w→w), w→C, 3×3 kernels with biases.
    c, w, d = 1, 32, 5
    expected = (9 * c * w + w) + (d - 2) * (9 * w * w + w) + (9 * w * c + c)
    assert sum(p.numel() for p in DnCNN(channels=c, depth=d, width=w).parameters()) == expected
    assert sum(p.numel() for p in DnCNN(channels=c, depth=d, width=w, bias=False).parameters()) == expected - (d - 1) * w - c
    n_unet = sum(p.numel() for p in UNet(channels=1, width=16, levels=2).parameters())
    assert 50_000 < n_unet < 200_000  # a CPU-sized network


@pytest.mark.parametrize("make", MODELS, ids=["dncnn", "unet"])
def test_spectral_norm_bounds_every_conv_operator_norm(make):
    torch.manual_seed(0)
    model = make(spectral_norm=True, zero_init_last=False)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    plain = make(zero_init_last=False)
    plain_norms = [conv_operator_norm_estimate(m, 24) for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert max(plain_norms) > 1.2  # the bound below is not trivially met
    for conv in convs:
        for size in (16, 40):
            assert conv_operator_norm_estimate(conv, size) <= 1.05


def test_spectral_norm_tracks_optimizer_steps_and_is_fixed_between_them():
    torch.manual_seed(0)
    model = DnCNN(channels=1, depth=3, width=8, spectral_norm=True, zero_init_last=False)
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)  # deterministic map
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    raw_before = [p.detach().clone() for p in model.parameters()]
    for _ in range(30):  # steps that push the output (and the raw kernels) up
        opt.zero_grad()
        (-model(x).pow(2).mean()).backward()
        opt.step()
    assert all((p - q).abs().max() > 0.1 for p, q in zip(model.parameters(), raw_before))
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        assert conv_operator_norm_estimate(conv, 24) <= 1.05


def test_spectral_norm_state_survives_a_checkpoint():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 12, 12)

    def trained() -> DnCNN:
        model = DnCNN(channels=1, depth=3, width=8, spectral_norm=True, zero_init_last=False)
        opt = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(3):
            opt.zero_grad()
            (-model(x).pow(2).mean()).backward()
            opt.step()
        return model

    model = trained()
    model(x)  # e.g. a validation pass after the last step
    torch.manual_seed(1)
    resumed = DnCNN(channels=1, depth=3, width=8, spectral_norm=True, zero_init_last=False)
    resumed.load_state_dict(model.state_dict())
    assert torch.equal(resumed(x), model(x))


def test_spectral_norm_network_is_lipschitz():
    torch.manual_seed(0)
    model = UNet(channels=1, width=4, levels=2, spectral_norm=True, zero_init_last=False, residual=False).double()
    assert lipschitz_lower_bound(model, (1, 1, 12, 12)) <= 1.05


def test_spectral_norm_with_zero_init_is_finite_identity():
    model = DnCNN(channels=1, depth=3, width=4, spectral_norm=True)
    x = torch.randn(1, 1, 8, 8)
    assert torch.equal(model(x), x)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="depth"):
        DnCNN(channels=1, depth=1)
    with pytest.raises(ValueError, match="levels"):
        UNet(channels=1, levels=0)
    with pytest.raises(TypeError):
        DnCNN(channels=1, widht=3)  # misspelt option fails loudly


@pytest.mark.parametrize("name,cls", [("dncnn", DnCNN), ("unet", UNet)])
def test_configs_instantiate(name, cls):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert "channels" not in cfg
    model = instantiate(cfg, channels=3)
    assert isinstance(model, cls)
    x = torch.randn(1, 3, 16, 16)
    assert model(x).shape == x.shape
