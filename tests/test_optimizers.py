"""Every optimizer and schedule a config can build is saved and read back (``weights_only=True``)."""
from __future__ import annotations

import inspect
import io

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY
from eqdeq_cli import CONFIG_DIR
from eqdeq_cli.engine.checkpoint import load_checkpoint
from eqdeq_cli.engine.optim_config import build_optimizer, build_scheduler
from eqdeq_cli.runs import train as run

#: Optimizers of torch.optim that cannot take an ordinary training step: SparseAdam needs sparse
#: gradients, LBFGS a closure re-evaluating the loss.
NOT_STEPPABLE = {"SparseAdam", "LBFGS"}
OPTIMIZERS = sorted(name for name, cls in vars(torch.optim).items()
                    if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)
                    and cls is not torch.optim.Optimizer and name not in NOT_STEPPABLE)
SCHEDULERS = sorted(p.stem for p in (CONFIG_DIR / "trainer" / "scheduler").glob("*.yaml"))


def _node(name: str):
    """The optimizer's config node as a user would write it, every tuple option as a config list."""
    params = inspect.signature(getattr(torch.optim, name)).parameters
    options = {k: list(p.default) for k, p in params.items() if isinstance(p.default, tuple)}
    return OmegaConf.create({"_target_": f"torch.optim.{name}", "_partial_": True, "lr": 0.01, **options})


def _step(param, optimizer, scheduler) -> None:
    optimizer.zero_grad()
    (param ** 2).sum().backward()
    optimizer.step()
    scheduler.step()


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_and_schedule_state_survive_a_weights_only_round_trip(name, scheduler):
    assert {"Adam", "AdamW", "NAdam", "RAdam", "Adamax", "Rprop", "SGD"} <= set(OPTIMIZERS)
    sched_node = OmegaConf.load(CONFIG_DIR / "trainer" / "scheduler" / f"{scheduler}.yaml")
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(3, 4))  # 2-D: Muon takes matrices only
    opt = build_optimizer(_node(name), [param])
    sched = build_scheduler(sched_node, opt, max_steps=10)
    for _ in range(2):
        _step(param, opt, sched)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    copy = torch.nn.Parameter(param.detach().clone())
    opt2 = build_optimizer(_node(name), [copy])
    sched2 = build_scheduler(sched_node, opt2, max_steps=10)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    _step(param, opt, sched)
    _step(copy, opt2, sched2)
    assert torch.equal(param, copy)
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


def test_nadam_with_betas_from_the_command_line_trains_resumes_and_evaluates(compose_cfg, tmp_path):
    overrides = [*TINY, "trainer.optimizer._target_=torch.optim.NAdam", "+trainer.optimizer.betas=[0.9,0.99]"]
    run.train(compose_cfg(overrides), run_dir=tmp_path)
    payload = load_checkpoint(tmp_path)
    assert payload["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.99]
    summary = run.train(compose_cfg([*overrides, "trainer.max_steps=2"]), run_dir=tmp_path)
    assert summary["steps"] == 2
    from eqdeq_cli.runs.restore import restore_run

    _, _, again = restore_run(tmp_path, compose_cfg([f"ckpt={tmp_path}"], config_name="eval"), [], "test")
    assert again["step"] == 2
