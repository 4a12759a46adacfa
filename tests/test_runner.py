"""The runner end to end: every component combination, resume, evaluation, divergence."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from conftest import TINY, StopAt
from eqdeq_cli.runs import train as run
from eqdeq_cli.engine.checkpoint import load_checkpoint
from eqdeq_cli.errors import TrainingDivergedError, UserError

PHYSICS = ("ct", "mri", "inpainting")
GROUPS = ("shifts", "rotations", "reflections")
SOLVERS = ("anderson", "fixed_point")
GRADS = ("implicit", "jfb", "unrolled")


def _initial_denoiser(compose_cfg, overrides):
    """The denoiser weights a run starts from (same seed, same build order)."""
    from eqdeq_cli.components import build_components
    from eqdeq_cli.engine.rng import seed_everything

    cfg = compose_cfg(overrides)
    seed_everything(int(cfg.seed))
    return {k: v.clone() for k, v in build_components(cfg).deq.state_dict().items() if "physics" not in k}


#: Every physics × group × solver × grad combination (54 one-step runs on tiny data, ~30 s).
COMBINATIONS = list(itertools.product(PHYSICS, GROUPS, SOLVERS, GRADS))


@pytest.mark.parametrize("physics,group,solver,grad", COMBINATIONS)
def test_every_combination_trains_one_step(compose_cfg, tmp_path, physics, group, solver, grad):
    overrides = [*TINY, f"physics={physics}", f"group={group}", f"solver={solver}", f"grad={grad}"]
    summary = run.train(compose_cfg(overrides), run_dir=tmp_path)
    assert summary["steps"] == 1
    assert math.isfinite(summary["psnr"]) and math.isfinite(summary["psnr_init"])
    trained = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["model"]
    start = _initial_denoiser(compose_cfg, overrides)
    assert set(trained) == set(start)
    assert all(torch.isfinite(v).all() for v in trained.values())
    changed = [k for k in start if not torch.equal(start[k], trained[k])]
    assert changed, "one optimizer step left every weight unchanged"


@pytest.mark.parametrize("cache", [0, 16])
def test_resume_after_interruption_gives_identical_weights(compose_cfg, tmp_path, cache):
    """Also with the per-sample cache of fixed points, which the checkpoint carries (a resumed run
    starts its samples where the uninterrupted one does)."""
    overrides = [*TINY, "trainer.max_steps=4", "trainer.eval_every=2", "trainer.scheduler.warmup_steps=2",
                 "grad=implicit", "data.n_train=6",  # 3 steps per epoch: the epoch boundary falls mid-run
                 f"grad.sample_cache={cache}"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run.train(compose_cfg(overrides), run_dir=whole)
    stopped = run.train(compose_cfg(overrides), run_dir=parts, callbacks=[StopAt(1)])
    assert stopped == {"status": "stopped", "step": 1}
    assert not (parts / "metrics.json").exists()
    run.train(compose_cfg(overrides), run_dir=parts)  # resume=auto picks up checkpoints/last.pt

    a = load_checkpoint(whole / "checkpoints" / "last.pt")
    b = load_checkpoint(parts / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    assert torch.equal(a["rng"]["generators"]["loss"], b["rng"]["generators"]["loss"])
    ma = json.loads((whole / "metrics.json").read_text())
    mb = json.loads((parts / "metrics.json").read_text())
    assert ma["psnr"] == mb["psnr"]


def test_resume_never_refuses_a_directory_holding_a_run(compose_cfg, tmp_path):
    run.train(compose_cfg([*TINY, "trainer.max_steps=2"]), run_dir=tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("checkpoints/last.pt", "metrics.json", "metrics.csv")}
    with pytest.raises(UserError, match=r"resume=never.*metrics.json.*another hydra.run.dir.*resume=auto"):
        run.train(compose_cfg([*TINY, "trainer.max_steps=1", "resume=never"]), run_dir=tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    (tmp_path / "metrics.json").unlink()  # a started run, stopped before its end, is refused too
    with pytest.raises(UserError, match=r"checkpoints/last.pt"):
        run.train(compose_cfg([*TINY, "trainer.max_steps=1", "resume=never"]), run_dir=tmp_path)


def test_resume_never_starts_a_new_run_in_a_fresh_directory(compose_cfg, tmp_path):
    summary = run.train(compose_cfg([*TINY, "trainer.max_steps=1", "resume=never"]), run_dir=tmp_path / "new")
    assert summary["steps"] == 1


def test_resume_from_a_path(compose_cfg, tmp_path):
    run.train(compose_cfg([*TINY, "trainer.max_steps=1"]), run_dir=tmp_path / "a")
    summary = run.train(compose_cfg([*TINY, "trainer.max_steps=2", f"resume={tmp_path / 'a'}"]),
                        run_dir=tmp_path / "b")
    assert summary["steps"] == 2
    assert load_checkpoint(tmp_path / "b")["step"] == 2


class PoisonWeights:
    """Sets every weight to NaN after ``step`` steps: every later loss is non-finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, trainer) -> None:
        if trainer.step == self.step:
            with torch.no_grad():
                for p in trainer.deq.fmap.denoiser.parameters():
                    p.fill_(float("nan"))


def test_non_finite_steps_are_skipped_then_stop_the_run(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, "trainer.max_steps=10", "trainer.checkpoint_every=1", "trainer.max_bad_steps=3"])
    with pytest.raises(TrainingDivergedError, match="3 consecutive steps"):
        run.train(cfg, run_dir=tmp_path, callbacks=[PoisonWeights(2)])
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["step"] == 2  # the last good state; the skipped steps wrote nothing
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_supervised_loss_needs_images_and_gets_them(compose_cfg, tmp_path):
    summary = run.train(compose_cfg([*TINY, "loss=supervised"]), run_dir=tmp_path)
    assert math.isfinite(summary["psnr"])


def test_ground_truth_is_withheld_from_unsupervised_losses(compose_cfg, tmp_path, monkeypatch):
    from eqdeq_cli.engine import trainer as trainer_mod

    seen = []
    original = trainer_mod.Trainer.train_step

    def spy(self):
        wrapped = self.loss

        def loss(f, y, physics, group, x=None, generator=None):
            seen.append(x)
            return wrapped(f, y, physics, group, x=x, generator=generator)

        self.loss = loss
        try:
            return original(self)
        finally:
            self.loss = wrapped

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", spy)
    run.train(compose_cfg([*TINY, "loss=ei", "trainer.max_steps=2"]), run_dir=tmp_path)
    assert seen == [None, None]


def test_image_size_mismatch_is_a_clear_error(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"\(1, 24, 24\).*\(1, 16, 16\)"):
        run.train(compose_cfg([*TINY, "physics.img_size=24"]), run_dir=tmp_path)


@pytest.mark.parametrize("physics, group, warns", [("mri", "shifts", True), ("mri", "rotations", False),
                                                   ("inpainting", "shifts", False)])
def test_training_warns_when_the_group_cannot_teach_ei(compose_cfg, tmp_path, caplog, physics, group, warns):
    with caplog.at_level("WARNING", logger="eqdeq_cli.runs.train"):
        run.train(compose_cfg([*TINY, f"physics={physics}", f"group={group}"]),
                  run_dir=tmp_path)
    warned = [r.getMessage() for r in caplog.records if "nullspace" in r.getMessage()]
    assert bool(warned) == warns
    if warns:
        assert "rotations" in warned[0]


def test_the_time_cap_is_recorded_in_metrics_status_and_the_last_line(tmp_path, cache_dir, capfd):
    from eqdeq_cli import cli

    run_dir = tmp_path / "run"
    # a cap of 6e-8 s: reached after the first step, whatever the machine
    assert cli.main(["train", *TINY, "trainer.max_steps=3", "trainer.max_minutes=1e-9",
                     f"hydra.run.dir={run_dir}"]) == 0
    note = "stopped at the time cap (trainer.max_minutes=1e-09) at step 1 of 3"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["time_cap"] == note
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "completed" and status["time_cap"] == note
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if "WARNING" in line and note in line and "trainer.max_minutes" in line]

    from eqdeq_cli.sweeps.table import collect

    table = collect(run_dir)
    assert table.rows[0].time_capped == 1 and table.time_capped[0].time_cap == note
    assert f"- `.`: {note}" in table.to_markdown()


def test_an_uncapped_run_has_no_time_cap_note(compose_cfg, tmp_path):
    summary = run.train(compose_cfg([*TINY, "trainer.max_minutes=60"]), run_dir=tmp_path)
    assert "time_cap" not in summary and "time_cap" not in json.loads((tmp_path / "metrics.json").read_text())


def test_an_unknown_monitor_fails_before_training(compose_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"trainer.monitor='bogus' is not an evaluation metric; valid: psnr, ssim, "):
        run.train(compose_cfg([*TINY, "trainer.monitor=bogus", "trainer.eval_every=1"]), run_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.csv").exists()


def test_channels_last_changes_the_layout_not_the_training(compose_cfg, tmp_path):
    overrides = [*TINY, "trainer.max_steps=2", "grad=implicit"]
    assert compose_cfg(overrides).trainer.channels_last  # the default
    default = run.train(compose_cfg([*overrides, "trainer.channels_last=false"]), run_dir=tmp_path / "default")
    layout = run.train(compose_cfg(overrides), run_dir=tmp_path / "channels_last")
    a = load_checkpoint(tmp_path / "default" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "channels_last" / "checkpoints" / "last.pt")["model"]
    assert set(a) == set(b)
    hidden = [k for k, v in a.items() if v.ndim == 4 and v.shape[1] > 1]  # layouts differ only with C_in > 1
    assert hidden
    for key in hidden:
        assert a[key].is_contiguous() and not a[key].is_contiguous(memory_format=torch.channels_last), key
        assert b[key].is_contiguous(memory_format=torch.channels_last) and not b[key].is_contiguous(), key
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
    assert layout["psnr"] == pytest.approx(default["psnr"], abs=1e-3)
