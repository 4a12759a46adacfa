"""Engine pieces the runner relies on: schedules, checkpoints, RNG state, data order."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from conftest import learning_rates
from eqdeq_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from eqdeq_cli.engine.schedules import constant, warmup_cosine
from eqdeq_cli.engine.rng import capture_rng_state, data_order, restore_rng_state
from eqdeq_cli.errors import CheckpointError


def _lrs(make, steps):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    return learning_rates(opt, make(opt), steps)


def test_warmup_cosine_values():
    lrs = _lrs(lambda o: warmup_cosine(o, max_steps=12, warmup_steps=2, min_lr_ratio=0.1), 13)
    assert lrs[0] == pytest.approx(1.0) and lrs[1] == pytest.approx(2.0)  # linear warm-up to the base lr
    assert lrs[7] == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert lrs[12] == pytest.approx(0.2)  # min_lr_ratio x base at max_steps
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_constant_schedule_and_bad_options():
    assert _lrs(lambda o: constant(o, max_steps=5, warmup_steps=0), 5) == [2.0] * 5
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        warmup_cosine(opt, max_steps=5, min_lr_ratio=2.0)


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    payload = {"model": {"w": torch.arange(3.0)}, "step": 7, "config": {"a": [1, 2]},
               "rng": capture_rng_state({"loss": torch.Generator().manual_seed(3)})}
    save_checkpoint(path, payload)
    back = load_checkpoint(path)
    assert back["step"] == 7 and torch.equal(back["model"]["w"], torch.arange(3.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="without checkpoints/last.pt"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="not an eqdeq checkpoint"):
        load_checkpoint(other)


def test_rng_state_round_trip_restores_every_stream():
    g = torch.Generator().manual_seed(5)
    state = capture_rng_state({"loss": g})
    first = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=g))
    random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=g)
    restore_rng_state(state, {"loss": g})
    again = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=g))
    assert first[:2] == again[:2]
    assert torch.equal(first[2], again[2]) and torch.equal(first[3], again[3])


def test_data_order_is_a_function_of_seed_and_epoch():
    a, b = data_order(10, seed=1, epoch=3), data_order(10, seed=1, epoch=3)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(10))
    assert not torch.equal(a, data_order(10, seed=1, epoch=4))
    assert not torch.equal(a, data_order(10, seed=2, epoch=3))
