"""The optimizer and scheduler nodes are checked at start-up: each bad option is one line naming its key."""
from __future__ import annotations

import pytest

from conftest import TINY
from eqdeq_cli import cli
from eqdeq_cli.engine.optim_config import check_optimizer_and_scheduler

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 2e-3, "weight_decay": 0.0}
COSINE = {"_target_": "eqdeq_cli.engine.schedules.warmup_cosine", "_partial_": True, "warmup_steps": 2,
          "min_lr_ratio": 0.1}


def _check(optimizer: dict | None = None, scheduler: dict | None = None) -> None:
    check_optimizer_and_scheduler({**ADAM, **(optimizer or {})}, {**COSINE, **(scheduler or {})}, max_steps=10)


def test_the_shipped_nodes_pass():
    _check()
    _check({"_target_": "torch.optim.SGD", "momentum": 0.9, "nesterov": True}, {"min_lr_ratio": 1})


@pytest.mark.parametrize("optimizer,scheduler,message", [
    # a value of the wrong type, checked against the target's default
    ({"lr": "abc"}, {}, "trainer.optimizer.lr must be a finite real number (torch.optim.Adam's default is 0.001), "
                        "got 'abc'"),
    ({"eps": float("nan")}, {}, "trainer.optimizer.eps must be a finite real number "
                                "(torch.optim.Adam's default is 1e-08), got nan"),
    ({"amsgrad": "yes"}, {}, "trainer.optimizer.amsgrad must be true or false (torch.optim.Adam's default is False), "
                             "got 'yes'"),
    ({"betas": [0.9]}, {}, "trainer.optimizer.betas must be a list of 2 finite real numbers "
                           "(torch.optim.Adam's default is [0.9, 0.999]), got [0.9]"),
    # a value the target refuses, traced to the option that causes it
    ({"lr": -1e-3}, {}, "trainer.optimizer.lr=-0.001 is refused by torch.optim.Adam (Invalid learning rate: -0.001); "
                        "its default is 0.001"),
    ({"weight_decay": -1}, {}, "trainer.optimizer.weight_decay=-1 is refused by torch.optim.Adam "
                               "(Invalid weight_decay value: -1); its default is 0"),
    ({"betas": [0.9, 2]}, {}, "trainer.optimizer.betas=[0.9, 2] is refused by torch.optim.Adam "
                              "(Invalid beta parameter at index 1: 2); its default is [0.9, 0.999]"),
    ({"_target_": "torch.optim.SGD", "momentum": -1}, {},
     "trainer.optimizer.momentum=-1 is refused by torch.optim.SGD (Invalid momentum value: -1); its default is 0"),
    # the schedule's own checks name the option; the node's path is put in front
    ({}, {"warmup_steps": 1.5}, "trainer.scheduler.warmup_steps must be an integer >= 0, got 1.5"),
    ({}, {"warmup_steps": -1}, "trainer.scheduler.warmup_steps must be an integer >= 0, got -1"),
    ({}, {"min_lr_ratio": 2}, "trainer.scheduler.min_lr_ratio must be a real number in [0.0, 1.0], got 2"),
    ({}, {"min_lr_ratio": "low"}, "trainer.scheduler.min_lr_ratio must be a finite real number "
                                  "(eqdeq_cli.engine.schedules.warmup_cosine's default is 0.1), got 'low'"),
    ({"_target_": "torch.optim.Adamm"}, {}, "trainer.optimizer._target_='torch.optim.Adamm' cannot be imported; "
                                            "give the dotted path of a class or function, e.g. torch.optim.AdamW"),
])
def test_bad_values_name_the_key(optimizer, scheduler, message):
    with pytest.raises(ValueError) as info:
        _check(optimizer, scheduler)
    assert str(info.value) == message


@pytest.mark.parametrize("optimizer,scheduler,message", [
    ({"lrr": 1e-3}, {}, "unknown key trainer.optimizer.lrr for torch.optim.Adam; valid keys: amsgrad, betas, "
                        "capturable, decoupled_weight_decay, differentiable, eps, foreach, fused, lr, maximize, "
                        "weight_decay"),
    ({"params": []}, {}, "trainer.optimizer.params is set by the trainer, not by the config; remove it"),
    ({}, {"max_steps": 5}, "trainer.scheduler.max_steps is set by the trainer, not by the config; remove it"),
])
def test_keys_the_target_does_not_take_are_refused(optimizer, scheduler, message):
    with pytest.raises(KeyError) as info:
        _check(optimizer, scheduler)
    assert info.value.args[0] == message


@pytest.mark.parametrize("override,message", [
    ("trainer.optimizer.lr=abc",
     "trainer.optimizer.lr must be a finite real number (torch.optim.Adam's default is 0.001), got 'abc'"),
    ("trainer.optimizer.lr=-1e-3",
     "trainer.optimizer.lr=-0.001 is refused by torch.optim.Adam (Invalid learning rate: -0.001); "
     "its default is 0.001"),
])
def test_train_stops_with_one_line_before_building_anything(tmp_path, capfd, cache_dir, override, message):
    code = cli.main(["train", *TINY, override, f"hydra.run.dir={tmp_path}"])
    err = capfd.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"[ERROR] {message}"), err
    assert "simulated" not in (tmp_path / "train.log").read_text()  # failed before any data was made
