"""Regularisers of the equilibrium (Jacobian Frobenius penalty, spectral-norm hinge): the value
each computes, the gradient it gives, what it promises, and how a run uses it (logged,
resumable, refused where there is no fixed point)."""
from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

from conftest import TINY, StopAt
from eqdeq_cli.analysis.contraction import spectral_norm_per_sample
from eqdeq_cli.deq import DEQ, JacobianPenalty, ProxGradMap, SpectralPenalty, anderson_solve
from eqdeq_cli.engine.checkpoint import load_checkpoint
from eqdeq_cli.models import DnCNN
from eqdeq_cli.physics import CTRadon
from eqdeq_cli.runs import train as run


class LinearMap(nn.Module):
    """``z ↦ W vec(z)``: its Jacobian is ``W`` everywhere."""

    def __init__(self, w: torch.Tensor, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.shape = shape

    def forward(self, z: torch.Tensor, ctx=None) -> torch.Tensor:
        return (z.reshape(z.shape[0], -1) @ self.w.T).reshape(z.shape)


def _linear_case(seed: int = 0, shape=(1, 3, 3)):
    gen = torch.Generator().manual_seed(seed)
    n = 9
    w = torch.randn(n, n, generator=gen, dtype=torch.float64) / 3
    fmap = LinearMap(w, shape).double()
    z_star = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    return fmap, z_star, n


def test_the_estimate_is_the_frobenius_norm_squared_per_element_on_average():
    fmap, z_star, n = _linear_case()
    reg = JacobianPenalty(weight=1.0, probes=20000)
    value = reg(fmap, [(z_star, None)], generator=torch.Generator().manual_seed(1)).detach()
    exact = float(fmap.w.detach().pow(2).sum()) / n
    assert float(value) == pytest.approx(exact, rel=0.03)


def test_its_gradient_is_that_of_the_frobenius_norm_on_average():
    fmap, z_star, n = _linear_case(seed=3)
    reg = JacobianPenalty(weight=1.0, probes=20000)
    reg(fmap, [(z_star, None)], generator=torch.Generator().manual_seed(2)).backward()
    exact = 2 * fmap.w.detach() / n  # d(‖W‖_F² / n)/dW
    err = (fmap.w.grad - exact).norm() / exact.norm()
    assert float(err) < 0.05


def test_one_probe_is_an_exact_per_probe_value_and_draws_from_the_generator():
    fmap, z_star, n = _linear_case(seed=4)
    reg = JacobianPenalty(weight=1.0, probes=1)
    value = reg(fmap, [(z_star, None)], generator=torch.Generator().manual_seed(5)).detach()
    eps = torch.randn(z_star.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float32).double()
    jt_eps = eps.reshape(2, -1) @ fmap.w.detach()  # εᵀ W per sample
    assert float(value) == pytest.approx(float((jt_eps.pow(2).sum(dim=1) / n).mean()), rel=1e-6)
    again = reg(fmap, [(z_star, None)], generator=torch.Generator().manual_seed(5)).detach()
    assert float(again) == float(value)


def _linear_with_singular_values(values, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(9, 9, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(9, 9, generator=gen, dtype=torch.float64))
    w = u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T
    z_star = torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64)
    return LinearMap(w, (1, 3, 3)).double(), z_star, u[:, 0], v[:, 0]


SINGULAR_VALUES = [1.5, 0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]


def test_the_spectral_hinge_is_the_squared_excess_of_the_top_singular_value():
    fmap, z_star, _, _ = _linear_with_singular_values(SINGULAR_VALUES)
    reg = SpectralPenalty(weight=1.0, target=0.9, iters=60)
    value = reg(fmap, [(z_star, None)], generator=torch.Generator().manual_seed(0))
    assert float(value.detach()) == pytest.approx((1.5 - 0.9) ** 2, rel=1e-6)


def test_its_gradient_moves_only_the_top_singular_value():
    fmap, z_star, u1, v1 = _linear_with_singular_values(SINGULAR_VALUES, seed=1)
    reg = SpectralPenalty(weight=1.0, target=0.9, iters=60)
    reg(fmap, [(z_star, None)], generator=torch.Generator().manual_seed(0)).backward()
    exact = 2 * (1.5 - 0.9) * torch.outer(u1, v1)  # d(σ₁ − t)²/dW
    assert torch.allclose(fmap.w.grad, exact, atol=1e-6)


def test_a_map_below_the_target_is_left_alone():
    fmap, z_star, _, _ = _linear_with_singular_values([0.8] + SINGULAR_VALUES[2:] + [0.01])
    reg = SpectralPenalty(weight=1.0, target=0.9, iters=20)
    value = reg(fmap, [(z_star, None)], generator=torch.Generator().manual_seed(0))
    value.backward()
    assert float(value.detach()) == 0.0 and float(fmap.w.grad.abs().max()) == 0.0


@pytest.mark.parametrize("reg", [JacobianPenalty(weight=1.0, probes=2), SpectralPenalty(weight=1.0, target=0.8)],
                         ids=["jacobian", "spectral"])
def test_minimising_it_makes_a_non_contractive_deq_map_contract(reg):
    """The promise: a CT DEQ whose residual denoiser was pushed to expand (‖∂T/∂z‖₂ > 1) ends
    below 1 after a few steps on the penalty alone, and its solve then converges."""
    torch.manual_seed(0)
    physics = CTRadon(img_size=16, n_views=6)
    denoiser = DnCNN(channels=1, depth=3, width=8, residual=True, zero_init_last=False)
    with torch.no_grad():
        for p in denoiser.parameters():
            p.mul_(3.0)
    fmap = ProxGradMap(denoiser, physics)
    y = physics.A(torch.rand(2, 1, 16, 16))
    ctx = fmap.prepare(y)
    z = fmap.init(y)

    def lipschitz():
        return float(spectral_norm_per_sample(lambda v: fmap(v, ctx), z, n_iter=30,
                                              generator=torch.Generator().manual_seed(0)).max())

    before = lipschitz()
    assert before > 1.0
    opt = torch.optim.Adam(denoiser.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        opt.zero_grad()
        reg(fmap, [(z, ctx)], generator=gen).backward()
        opt.step()
    after = lipschitz()
    assert after < 0.95 < 1.0 < before
    deq = DEQ(fmap, forward_solver=functools.partial(anderson_solve, max_iter=100, tol=1e-5)).eval()
    with torch.no_grad():
        deq(y)
    assert bool(deq.last_stats.forward.converged.all())


def test_the_deq_keeps_its_training_fixed_points_only_when_asked():
    physics = CTRadon(img_size=16, n_views=6)
    fmap = ProxGradMap(DnCNN(channels=1, depth=2, width=4), physics)
    deq = DEQ(fmap, forward_solver=functools.partial(anderson_solve, max_iter=5, tol=1e-6)).train()
    y = physics.A(torch.rand(2, 1, 16, 16))
    deq(y)
    assert deq.pop_equilibria() == []
    deq.keep_equilibria = True
    x = deq(y)
    deq(y.clone().requires_grad_())  # as an EI loss's second call, whose y derives from the first's output
    kept = deq.pop_equilibria()
    assert len(kept) == 2 and kept[0][0].shape == x.shape and not kept[0][0].requires_grad
    assert not any(t.requires_grad for t in (kept[1][1].y, kept[1][1].Aty))  # a penalty reaches only the map
    assert deq.pop_equilibria() == []
    deq.eval()
    with torch.no_grad():
        deq(y)
    assert deq.pop_equilibria() == []  # evaluation solves are not training fixed points


@pytest.mark.parametrize("name, extra, key", [("jacobian", [], "loss_jac"),
                                              ("spectral", ["regularizer.target=0.01"], "loss_lip")])
def test_a_run_adds_the_weighted_penalty_to_its_loss_and_logs_it(compose_cfg, tmp_path, name, extra, key):
    from eqdeq_cli.components import build_components
    from eqdeq_cli.runs.restore import measurement_sets
    from eqdeq_cli.engine.rng import seed_everything
    from eqdeq_cli.engine.settings import eval_settings, trainer_settings
    from eqdeq_cli.engine.trainer import Trainer

    cfg = compose_cfg([*TINY, f"regularizer={name}", "regularizer.weight=0.01", *extra])
    seed_everything(0)
    comps = build_components(cfg)
    assert comps.regularizer.weight == 0.01
    sets = measurement_sets(cfg, comps, ("train", "val"))
    trainer = Trainer(deq=comps.deq, physics=comps.physics, group=comps.group, loss=comps.loss,
                      train_data=sets["train"], val_data=sets["val"], settings=trainer_settings(cfg.trainer),
                      eval_settings=eval_settings(cfg.evaluation), run_dir=tmp_path, seed=0, config={},
                      device=torch.device("cpu"), regularizer=comps.regularizer)
    out = trainer.train_step()
    ei = comps.loss.terms["ei"].resolved_weight
    assert out[key] > 0
    assert out["loss"] == pytest.approx(out["loss_mc"] + ei * out["loss_ei"] + 0.01 * out[key], rel=1e-5)
    assert out["loss_total"] == pytest.approx(out["loss"], rel=1e-6)
    trainer.close()


def test_a_run_without_it_is_unchanged(compose_cfg):
    from eqdeq_cli.components import build_components

    cfg = compose_cfg(list(TINY))
    assert "regularizer" not in cfg
    assert build_components(cfg).regularizer is None


def test_regularizer_none_removes_a_presets_penalty(compose_cfg):
    from eqdeq_cli.components import build_regularizer

    assert isinstance(build_regularizer(compose_cfg(["experiment=mri_supervised"])), SpectralPenalty)
    assert build_regularizer(compose_cfg(["experiment=mri_supervised", "regularizer=none"])) is None


def test_a_regularized_run_resumes_to_identical_weights(compose_cfg, tmp_path):
    overrides = [*TINY, "regularizer=jacobian", "trainer.max_steps=3", "trainer.scheduler.warmup_steps=1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run.train(compose_cfg(overrides), run_dir=whole)
    assert run.train(compose_cfg(overrides), run_dir=parts, callbacks=[StopAt(1)])["status"] == "stopped"
    run.train(compose_cfg(overrides), run_dir=parts)
    a = load_checkpoint(whole / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(parts / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((whole / "metrics.json").read_text())["psnr"] == \
        json.loads((parts / "metrics.json").read_text())["psnr"]


@pytest.mark.parametrize("name, override, message", [
    ("jacobian", "grad=unrolled", "regularizer JacobianPenalty acts on the DEQ's fixed point, which grad=unrolled "
                                  "does not compute; use grad=implicit or grad=jfb"),
    ("jacobian", "regularizer.weight=-1", "regularizer: weight must be a finite real number > 0.0, got -1"),
    ("jacobian", "regularizer.probes=0", "regularizer: probes must be an integer >= 1, got 0"),
    ("spectral", "regularizer.target=1.5", "regularizer: target must be a real number in (0.0, 1.0], got 1.5"),
    ("spectral", "regularizer.iters=0", "regularizer: iters must be an integer >= 1, got 0"),
])
def test_a_bad_setting_is_one_line(tmp_path, capfd, name, override, message):
    from eqdeq_cli import cli

    assert cli.main(["train", "debug=smoke", f"regularizer={name}", override, f"hydra.run.dir={tmp_path}"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert message in err
