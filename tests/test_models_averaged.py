"""The averaged denoiser keeps its Lipschitz promise, before and after training steps."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from eqdeq_cli.analysis.contraction import spectral_norm_per_sample
from eqdeq_cli.models import AveragedDenoiser, DnCNN, averaged_dncnn


def _lipschitz(fn, x: torch.Tensor, n_iter: int = 40) -> float:
    return float(spectral_norm_per_sample(fn, x, n_iter=n_iter, generator=torch.Generator().manual_seed(0)).max())


def _perturbed(model: nn.Module, seed: int, scale: float) -> nn.Module:
    """Large random steps on every weight, as aggressive training would take."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def test_starts_as_a_scaled_identity():
    d = averaged_dncnn(channels=1, depth=3, width=8, alpha=0.3)
    x = torch.rand(2, 1, 12, 12)
    assert torch.allclose(d(x), 0.7 * x, atol=1e-6)


@pytest.mark.parametrize("lipschitz", [1.0, 0.8])
def test_lipschitz_bound_holds_for_arbitrary_weights(lipschitz):
    torch.manual_seed(0)
    d = _perturbed(averaged_dncnn(channels=1, depth=4, width=8, alpha=0.6, lipschitz=lipschitz), seed=1, scale=1.0)
    d(torch.zeros(1, 1, 8, 8))  # a forward pass refreshes the spectral normalisation after the weight change
    bound = d.lipschitz_bound()
    x = torch.rand(3, 1, 32, 32)
    measured = _lipschitz(d, x)
    assert measured <= bound * (1 + 5e-3)
    # The bound is not vacuous: the identity part alone reaches 1 − α.
    assert measured >= 1 - float(d.alpha.detach()) - 1e-6


def test_the_residual_dncnn_has_no_such_bound():
    """Why the averaged form exists: the same perturbation makes a residual DnCNN expansive."""
    torch.manual_seed(0)
    d = _perturbed(DnCNN(channels=1, depth=4, width=8), seed=1, scale=1.0)
    assert _lipschitz(d, torch.rand(3, 1, 32, 32)) > 1.5


def test_alpha_stays_in_the_open_interval_under_training():
    d = averaged_dncnn(channels=1, depth=2, width=4)
    with torch.no_grad():
        d.alpha_logit.fill_(1e4)
    assert 0.0 < float(d.alpha.detach()) <= 1.0 and d.lipschitz_bound() <= 1.0


@pytest.mark.parametrize("kwargs,match", [({"alpha": 1.0}, "alpha must be a real number in \\(0, 1\\), got 1.0"),
                                          ({"alpha": 0}, "alpha must be"),
                                          ({"lipschitz": 1.5}, "lipschitz must be a real number in \\(0, 1\\], got 1.5"),
                                          ({"lipschitz": 0.0}, "lipschitz must be")])
def test_bad_settings_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AveragedDenoiser(nn.Identity(), **kwargs)


def test_fixed_alpha_is_not_a_parameter():
    d = averaged_dncnn(channels=1, depth=2, width=4, learn_alpha=False)
    assert "alpha_logit" not in dict(d.named_parameters()) and "alpha_logit" in d.state_dict()
