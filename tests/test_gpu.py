"""The CUDA path: implicit gradients on the device, the CT operator's adjoint at GPU sizes,
training there and carrying its run back to a CPU. Skipped without a CUDA device. The
solver's and the implicit gradient's bfloat16 tests run on CUDA too, as the ``cuda`` cases of
their CPU tests (``conftest.DEVICES``); ``pytest -m gpu`` selects all of these."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from conftest import TINY, StopAt
from eqdeq_cli import cli
from eqdeq_cli.engine.checkpoint import load_checkpoint
from eqdeq_cli.physics import CTRadon
from eqdeq_cli.runs import train as run
from test_deq_gradients import assert_agree, generic_loss, gradients, make_deq, make_problem

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_implicit_gradient_on_cuda_equals_the_cpu_gradient():
    fmap, physics, y = make_problem()
    w = torch.randn(y.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    y = y.requires_grad_()
    cpu = gradients(generic_loss(make_deq(fmap, "implicit"), y, physics, w), fmap, y)
    fmap_c = copy.deepcopy(fmap).cuda()
    y_c = y.detach().cuda().requires_grad_()
    deq = make_deq(fmap_c, "implicit")
    cuda = gradients(generic_loss(deq, y_c, fmap_c.physics, w.cuda()), fmap_c, y_c)
    assert deq.last_stats.backward[0].converged.all()
    for a, b in zip(cuda, cpu):
        assert a.device.type == "cuda"
        assert_agree(a.cpu(), b, rel=1e-8)


@pytest.mark.parametrize("size, views", [(128, 51), (256, 90)])
def test_ct_operator_on_cuda_passes_the_dot_product_test(size, views):
    ct = CTRadon(img_size=size, n_views=views).cuda()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, size, size, generator=g).cuda()
    y = ct.A(x)
    r = torch.randn(y.shape, generator=g).cuda()
    lhs, rhs = float((y * r).sum()), float((x * ct.A_adjoint(r)).sum())
    assert abs(lhs - rhs) / float((y * r).abs().sum()) < 1e-5


def test_bf16_training_on_cuda_stays_finite_and_its_run_evaluates_on_the_cpu(compose_cfg, tmp_path):
    run_dir = tmp_path / "run"
    run.train(compose_cfg([*TINY, "trainer.device=cuda", "trainer.bf16=true", "trainer.max_steps=3",
                           "grad=implicit"]), run_dir=run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["psnr"]) and metrics["steps"] == 3
    assert all(t.device.type == "cpu" for t in load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"].values())
    assert cli.main(["eval", f"ckpt={run_dir}", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'eval'}"]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["psnr"] == pytest.approx(metrics["psnr"], abs=0.05)


def test_resume_on_cuda_repeats_the_run_to_the_kernels_rounding(compose_cfg, tmp_path):
    # CUDA's sparse products and convolutions are not bit-repeatable: two uninterrupted runs of
    # this config differ by about 1e-6 in their weights (2.7e-7 with deterministic algorithms), and
    # a resumed run differs from the uninterrupted one by the same amount, not more. A wrong
    # restore (optimizer state, random draws, data order, step) moves weights by 1e-3 and above.
    overrides = [*TINY, "trainer.device=cuda", "trainer.max_steps=4", "trainer.scheduler.warmup_steps=2",
                 "grad=implicit", "data.n_train=6"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run.train(compose_cfg(overrides), run_dir=whole)
    assert run.train(compose_cfg(overrides), run_dir=parts, callbacks=[StopAt(1)]) == {"status": "stopped", "step": 1}
    run.train(compose_cfg(overrides), run_dir=parts)
    a = load_checkpoint(whole / "checkpoints" / "last.pt")
    b = load_checkpoint(parts / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=1e-5, msg=key)
