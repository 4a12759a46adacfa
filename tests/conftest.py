"""Shared fixtures: a temporary data cache, and composing the real config tree."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from eqdeq_cli import CONFIG_DIR  # the tree the commands compose from

REPO = Path(__file__).resolve().parents[1]

#: ``cpu``, and ``cuda`` marked ``gpu`` (skipped without a CUDA device): for tests that hold on both.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]

#: Overrides that make any run tiny: 16-pixel phantoms, a small denoiser, small budgets.
TINY = [
    "data=tiny",
    "data.img_size=16",
    "data.n_train=4",
    "data.n_val=2",
    "data.n_test=2",
    "model.depth=2",
    "model.width=8",
    "solver.forward.max_iter=3",
    "solver.backward.max_iter=3",
    "solver.eval.max_iter=3",
    "grad.unroll_steps=2",
    "trainer.max_steps=1",
    "trainer.batch_size=2",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "trainer.eval_every=0",
    "trainer.checkpoint_every=0",
    "trainer.scheduler.warmup_steps=0",
    "evaluation.batch_size=2",
    "evaluation.n_images=0",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide ``EQDEQ_CACHE_DIR`` (phantoms are generated once per parameter set)."""
    path = tmp_path_factory.mktemp("eqdeq-cache")
    old = os.environ.get("EQDEQ_CACHE_DIR")
    os.environ["EQDEQ_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EQDEQ_CACHE_DIR", None)
    else:
        os.environ["EQDEQ_CACHE_DIR"] = old


@pytest.fixture
def compose_cfg(cache_dir: Path):
    """``compose_cfg(overrides, config_name="train")`` → the composed config (struct mode)."""
    from hydra import compose, initialize_config_dir

    def _compose(overrides: list[str], config_name: str = "train"):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))

    return _compose


def learning_rates(opt, sched, steps: int) -> list[float]:
    """The learning rate of ``opt``'s first group at each of ``steps`` steps of ``sched``."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


class StopAt:
    """Requests a stop once the trainer has taken ``step`` steps (as a signal handler would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, trainer) -> None:
        if trainer.step == self.step:
            trainer.request_stop()
