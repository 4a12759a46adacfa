"""Learning-rate schedules: the documented multipliers, and the horizon a resumed run follows."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from conftest import TINY, learning_rates
from eqdeq_cli.engine.schedules import constant, follow_horizon, warmup_cosine
from eqdeq_cli.runs import train as run


def _cosine(t: int, warmup: int, horizon: int, floor: float) -> float:
    """The multiplier of the module docstring, written out."""
    if t < warmup:
        return (t + 1) / warmup
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warmup) / (horizon - warmup))))


def _stepped(schedule, steps: int, **options):
    """An SGD optimizer on one parameter (base LR 1) and its schedule after ``steps`` steps."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = schedule(opt, **options)
    for _ in range(steps):
        opt.step()
        sched.step()
    return opt, sched


def test_warmup_cosine_gives_the_documented_multipliers():
    opt, sched = _stepped(warmup_cosine, 0, max_steps=8, warmup_steps=2, min_lr_ratio=0.1)
    assert learning_rates(opt, sched, 10) == pytest.approx([_cosine(t, 2, 8, 0.1) for t in range(10)], abs=1e-12)


def test_a_loaded_schedule_follows_the_new_horizon_from_its_step_on():
    old_opt, old = _stepped(warmup_cosine, 4, max_steps=4, warmup_steps=1, min_lr_ratio=0.1)
    opt, sched = _stepped(warmup_cosine, 0, max_steps=8, warmup_steps=1, min_lr_ratio=0.1)
    opt.load_state_dict(old_opt.state_dict())
    sched.load_state_dict(old.state_dict())
    assert sched.lr_lambdas[0].max_steps == 4  # what load_state_dict restores: the old horizon
    assert follow_horizon(sched, 8) == (4, pytest.approx(0.1), pytest.approx(_cosine(4, 1, 8, 0.1)))
    assert sched.get_last_lr() == [opt.param_groups[0]["lr"]]
    resumed = learning_rates(opt, sched, 4)
    assert resumed == pytest.approx([_cosine(t, 1, 8, 0.1) for t in range(4, 8)], abs=1e-12)
    fresh_opt, fresh = _stepped(warmup_cosine, 4, max_steps=8, warmup_steps=1, min_lr_ratio=0.1)
    assert resumed == learning_rates(fresh_opt, fresh, 4)  # the same floats as a run started with 8 steps


def test_an_unchanged_horizon_or_a_constant_schedule_is_left_untouched():
    opt, sched = _stepped(warmup_cosine, 3, max_steps=8, warmup_steps=0, min_lr_ratio=0.1)
    lr = opt.param_groups[0]["lr"]
    assert follow_horizon(sched, 8) is None and opt.param_groups[0]["lr"] == lr
    opt, sched = _stepped(constant, 3, max_steps=8, warmup_steps=5)
    assert follow_horizon(sched, 20) is None and opt.param_groups[0]["lr"] == pytest.approx(4 / 5)


class _RecordLR:
    """The learning rate of each next step, keyed by the step's index (``trainer.step``)."""

    def __init__(self) -> None:
        self.lr: dict[int, float] = {}

    def __call__(self, trainer) -> None:
        self.lr[trainer.step] = trainer.optimizer.param_groups[0]["lr"]


def test_train_further_follows_the_cosine_of_the_new_max_steps(compose_cfg, tmp_path, caplog):
    base = [*TINY, "trainer.checkpoint_every=1"]  # warm-up 0, min_lr_ratio 0.1, lr 0.002
    run.train(compose_cfg([*base, "trainer.max_steps=4"]), run_dir=tmp_path / "further")
    further = _RecordLR()
    with caplog.at_level(logging.INFO, logger="eqdeq_cli"):
        run.train(compose_cfg([*base, "trainer.max_steps=8"]), run_dir=tmp_path / "further", callbacks=[further])
    fresh = _RecordLR()
    run.train(compose_cfg([*base, "trainer.max_steps=8"]), run_dir=tmp_path / "fresh", callbacks=[fresh])
    assert [further.lr[t] for t in range(5, 8)] == [fresh.lr[t] for t in range(5, 8)]
    assert [fresh.lr[t] for t in range(5, 8)] == pytest.approx([0.002 * _cosine(t, 0, 8, 0.1) for t in range(5, 8)])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LR schedule horizon")]
    assert lines == [f"LR schedule horizon 4 -> 8 steps: trainer.max_steps changed since the checkpoint, so the "
                     f"schedule follows the new horizon from step 4 on (LR {fresh.lr[4]:.4g}, was 0.0002)"]


def test_a_resume_with_the_same_max_steps_logs_no_horizon_change(compose_cfg, tmp_path, caplog):
    from conftest import StopAt

    command = compose_cfg([*TINY, "trainer.max_steps=4", "trainer.checkpoint_every=1"])
    assert run.train(command, run_dir=tmp_path, callbacks=[StopAt(2)])["status"] == "stopped"
    with caplog.at_level(logging.INFO, logger="eqdeq_cli"):
        assert run.train(command, run_dir=tmp_path)["steps"] == 4
    assert "resumed from" in caplog.text and "LR schedule horizon" not in caplog.text


# The training solve's tolerance schedule (trainer.forward_tol_start).

def test_the_tolerance_falls_geometrically_to_the_solvers_then_stays():
    from eqdeq_cli.engine.schedules import tolerance_at

    tols = [tolerance_at(t, max_steps=8, start=1e-2, end=1e-4, ramp=0.5) for t in range(9)]
    assert tols[:5] == pytest.approx([1e-2, 10 ** -2.5, 1e-3, 10 ** -3.5, 1e-4], rel=1e-12)
    assert tols[0] == 1e-2 and tols[4:] == [1e-4] * 5  # the solver's own tolerance, not one rounded from it
    assert all(a > b for a, b in zip(tols[:5], tols[1:5]))
    with pytest.raises(ValueError, match=r"^trainer.forward_tol_ramp must be a real number in \(0.0, 1.0\], got 1.5$"):
        tolerance_at(0, max_steps=8, start=1e-2, end=1e-4, ramp=1.5)


def test_the_solvers_tolerance_is_read_from_its_config_node_or_signature():
    import functools

    from eqdeq_cli.deq.solvers import anderson_solve
    from eqdeq_cli.engine.trainer import solver_tolerance

    assert solver_tolerance(functools.partial(anderson_solve, max_iter=5, tol=3e-4)) == 3e-4
    assert solver_tolerance(functools.partial(anderson_solve, max_iter=5)) == 1e-4  # its default
    with pytest.raises(ValueError, match=r"^trainer.forward_tol_start needs a forward solver with a tol option "
                                         r"\(solver.forward\), got <lambda>$"):
        solver_tolerance(lambda f, z0: (z0, None))


class _RecordTolerance:
    """The forward solver's tolerance at each step (read after the step, from the DEQ)."""

    def __init__(self) -> None:
        self.tol: list[float] = []

    def __call__(self, trainer) -> None:
        self.tol.append(trainer.deq.forward_solver.keywords["tol"])


def test_training_solves_follow_the_schedule_and_a_resumed_run_repeats_it(compose_cfg, tmp_path):
    from conftest import StopAt

    from eqdeq_cli.engine.schedules import tolerance_at

    base = [*TINY, "trainer.max_steps=4", "trainer.checkpoint_every=1", "trainer.log_every=1",
            "trainer.forward_tol_start=1e-2", "trainer.forward_tol_ramp=0.5", "solver.forward.tol=1e-4"]
    fresh = _RecordTolerance()
    run.train(compose_cfg(base), run_dir=tmp_path / "fresh", callbacks=[fresh])
    expected = [tolerance_at(t, max_steps=4, start=1e-2, end=1e-4, ramp=0.5) for t in range(4)]
    assert fresh.tol == pytest.approx(expected, rel=1e-12) and expected[0] == pytest.approx(1e-2)
    assert expected[2:] == pytest.approx([1e-4, 1e-4])
    resumed = _RecordTolerance()
    assert run.train(compose_cfg(base), run_dir=tmp_path / "resumed", callbacks=[StopAt(1)])["status"] == "stopped"
    run.train(compose_cfg(base), run_dir=tmp_path / "resumed", callbacks=[resumed])
    assert resumed.tol == fresh.tol[1:]
    a = torch.load(tmp_path / "fresh" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides, message", [
    (["solver.forward.tol=0"], r"^trainer.forward_tol_start falls to solver.forward.tol, which must then be > 0, "
                               r"got 0.0$"),
    (["solver.forward.tol=0.1"], r"^trainer.forward_tol_start=0.01 is below solver.forward.tol=0.1, the tolerance it "
                                 r"falls to: give a start at or above it, or null$"),
    (["grad=unrolled"], r"^trainer.forward_tol_start sets the tolerance of the forward solve, which grad=unrolled "
                        r"does not run; use grad=implicit or grad=jfb, or leave it at null$"),
])
def test_a_tolerance_schedule_needs_a_solve_and_a_lower_positive_solver_tolerance(compose_cfg, tmp_path, overrides,
                                                                                   message):
    cfg = compose_cfg([*TINY, "trainer.max_steps=2", "trainer.forward_tol_start=1e-2", *overrides])
    with pytest.raises(ValueError, match=message):
        run.train(cfg, run_dir=tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_tolerance_schedule_may_start_at_the_solvers_tolerance(compose_cfg, tmp_path):
    # a sweep over forward_tol_start may hold the solver's own tolerance as its baseline
    tol = _RecordTolerance()
    cfg = compose_cfg([*TINY, "trainer.max_steps=2", "trainer.forward_tol_start=1e-3", "solver.forward.tol=1e-3"])
    run.train(cfg, run_dir=tmp_path, callbacks=[tol])
    assert tol.tol == [1e-3, 1e-3]


def test_auto_starts_at_ten_times_the_solvers_tolerance(compose_cfg, tmp_path, caplog):
    from eqdeq_cli.engine.schedules import tolerance_at

    tol = _RecordTolerance()
    cfg = compose_cfg([*TINY, "trainer.max_steps=4", "trainer.forward_tol_start=auto", "trainer.forward_tol_ramp=0.5",
                       "solver.forward.tol=2e-4"])
    with caplog.at_level(logging.INFO):
        run.train(cfg, run_dir=tmp_path, callbacks=[tol])
    assert "training solve tolerance: 0.002 at step 0, falling to 0.0002 over the first 0.5 of the run " \
           "(trainer.forward_tol_start=auto)" in caplog.text
    assert tol.tol[0] == pytest.approx(2e-3, rel=1e-12)
    assert tol.tol == pytest.approx([tolerance_at(t, max_steps=4, start=2e-3, end=2e-4, ramp=0.5) for t in range(4)],
                                    rel=1e-12)


@pytest.mark.parametrize("overrides", [["grad=unrolled"], ["solver.forward.tol=0"]])
def test_auto_is_off_without_a_training_solve_or_a_positive_tolerance(compose_cfg, tmp_path, overrides):
    seen = []
    cfg = compose_cfg([*TINY, "trainer.max_steps=2", "trainer.forward_tol_start=auto", *overrides])
    run.train(cfg, run_dir=tmp_path, callbacks=[lambda trainer: seen.append(trainer.forward_tol_start)])
    assert seen == [None, None]  # no schedule: the solver's own tolerance throughout


def test_forward_tol_start_refuses_another_word(compose_cfg, tmp_path):
    cfg = compose_cfg([*TINY, "trainer.max_steps=2", "trainer.forward_tol_start=fast"])
    with pytest.raises(ValueError, match=r"^trainer.forward_tol_start must be a tolerance, auto or null, got 'fast'$"):
        run.train(cfg, run_dir=tmp_path)
