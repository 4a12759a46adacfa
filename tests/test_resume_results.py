"""A finished run's results are never replaced unnoticed: a rerun into a directory whose
checkpoints were removed, and a resume that would shorten a run."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from conftest import TINY
from eqdeq_cli import cli
from eqdeq_cli.runs import train as run
from eqdeq_cli.runs.resume import ResumeRefused, check_rerun_without_checkpoint, finished_results
from eqdeq_cli.runs.status import write_status

RUN = [*TINY, "trainer.max_steps=2", "trainer.checkpoint_every=1"]


def _files(root):
    """Every file under ``root`` but the log Hydra appends to, by path: its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "train.log"}


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line.split("[ERROR] ", 1)[1] for line in err.splitlines() if "[ERROR]" in line]


def _finished_without_checkpoints(run_dir, *overrides) -> dict[str, bytes]:
    assert cli.main(["train", *RUN, *overrides, f"hydra.run.dir={run_dir}"]) == 0
    shutil.rmtree(run_dir / "checkpoints")  # "to save disk": the results stay
    return _files(run_dir)


# -- a rerun into a finished run whose checkpoints were removed ----------------------------------------
def test_another_experiment_is_refused_and_leaves_the_finished_run_as_it_was(tmp_path, cache_dir, capfd):
    run_dir = tmp_path / "run"
    before = _finished_without_checkpoints(run_dir)
    capfd.readouterr()
    assert cli.main(["train", *RUN, "seed=5", f"hydra.run.dir={run_dir}"]) == 1
    assert _error_lines(capfd.readouterr().err) == [
        f"{run_dir} holds a finished run (metrics.json, status.json 'completed') whose checkpoints were removed, of "
        "another experiment (.hydra/config.yaml → now: seed: 0 → 5): to keep its results, choose another "
        f"hydra.run.dir for this run, or move them out of {run_dir} first"]
    assert _files(run_dir) == before  # metrics, status, .hydra/, images, metrics.csv: byte for byte


def test_the_same_experiment_is_trained_again_with_a_warning(tmp_path, cache_dir, capfd):
    run_dir = tmp_path / "run"
    before = _finished_without_checkpoints(run_dir)
    capfd.readouterr()
    assert cli.main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 0
    warned = [line.split("[WARNING] ", 1)[1] for line in capfd.readouterr().err.splitlines() if "[WARNING]" in line]
    assert f"no checkpoint in {run_dir}: training this experiment there again from step 0; its metrics.json will " \
           "be replaced" in warned
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["steps"] == 2 and again["psnr"] == json.loads(before["metrics.json"])["psnr"]  # same training
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_a_second_sweep_into_a_sweep_without_checkpoints_leaves_every_job(tmp_path, cache_dir, capfd):
    sweep = tmp_path / "sweep"
    cli.main(["train", "-m", *RUN, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    for job in ("0", "1"):
        shutil.rmtree(sweep / job / "checkpoints")
    before = {job: _files(sweep / job) for job in ("0", "1")}
    capfd.readouterr()
    cli.main(["train", "-m", *RUN, "seed=2,3", f"hydra.sweep.dir={sweep}"])  # "add two seeds"
    err = capfd.readouterr().err
    for job, seed in (("0", 0), ("1", 1)):
        assert f"{sweep / job} holds a job of an earlier sweep (seed={seed}), not this one (seed={seed + 2})" in err
        assert _files(sweep / job) == before[job]


def test_a_rerun_of_a_sweep_without_checkpoints_under_another_setting_leaves_its_job(tmp_path, cache_dir, capfd):
    sweep = tmp_path / "sweep"
    cli.main(["train", "-m", *RUN, "seed=0", f"hydra.sweep.dir={sweep}"])
    shutil.rmtree(sweep / "0" / "checkpoints")
    before = _files(sweep / "0")
    capfd.readouterr()
    cli.main(["train", "-m", *RUN, "seed=2", f"hydra.sweep.dir={sweep}"])  # nothing swept: the job's own check
    assert f"{sweep / '0'} holds a finished run (metrics.json, status.json 'completed') whose checkpoints were " \
           "removed, of another experiment (.hydra/config.yaml → now: seed: 0 → 2)" in capfd.readouterr().err
    assert _files(sweep / "0") == before


def test_what_counts_as_a_finished_run(tmp_path):
    assert finished_results(tmp_path) == []
    write_status(tmp_path, "failed", error="bad value")  # a failed start left nothing to keep
    assert finished_results(tmp_path) == []
    write_status(tmp_path, "stopped")
    assert finished_results(tmp_path) == ["status.json 'stopped'"]
    (tmp_path / "metrics.json").write_text("{}")
    write_status(tmp_path, "running")  # a continuation that crashed: the earlier results are still there
    assert finished_results(tmp_path) == ["metrics.json"]


def test_a_finished_run_without_its_config_is_refused(tmp_path):
    write_status(tmp_path, "stopped")
    with pytest.raises(ResumeRefused) as err:
        check_rerun_without_checkpoint(tmp_path, {"seed": 0})
    assert str(err.value) == (
        f"{tmp_path} holds a finished run (status.json 'stopped') whose checkpoints were removed, and no "
        ".hydra/config.yaml to tell whether it is this experiment: to keep its results, choose another hydra.run.dir "
        f"for this run, or move them out of {tmp_path} first")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: ${missing}\n")
    with pytest.raises(ResumeRefused, match=r"its .*config\.yaml cannot be read \(Interpolation key 'missing' not "
                                            r"found\): to keep its results"):
        check_rerun_without_checkpoint(tmp_path, {"seed": 0})


def test_a_stopped_run_without_checkpoints_is_retrained_only_as_the_same_experiment(tmp_path, caplog):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\ntrainer:\n  max_steps: 4\n  device: cpu\n")
    write_status(tmp_path, "stopped")
    with caplog.at_level(logging.WARNING, logger="eqdeq_cli"):
        check_rerun_without_checkpoint(tmp_path, {"seed": 0, "trainer": {"max_steps": 8, "device": "cuda"}})
    assert caplog.messages == [f"no checkpoint in {tmp_path}: training this experiment there again from step 0; "
                               "its status.json will be replaced"]
    with pytest.raises(ResumeRefused, match=r"\(\.hydra/config\.yaml → now: seed: 0 → 1\)"):
        check_rerun_without_checkpoint(tmp_path, {"seed": 1, "trainer": {"max_steps": 4}})


# -- trainer.max_steps below the checkpoint's step ----------------------------------------------------
def test_a_resume_that_would_shorten_the_run_is_refused(compose_cfg, tmp_path):
    run.train(compose_cfg([*RUN, "trainer.max_steps=4"]), run_dir=tmp_path)
    before = _files(tmp_path)
    with pytest.raises(ResumeRefused) as err:
        run.train(compose_cfg([*RUN, "trainer.max_steps=3"]), run_dir=tmp_path)
    assert str(err.value) == (
        f"cannot resume {tmp_path / 'checkpoints' / 'last.pt'}: it has trained 4 steps, and trainer.max_steps=3 "
        "cannot shorten it: set trainer.max_steps=4 or more to continue it, evaluate it with eqdeq eval, or choose "
        "another hydra.run.dir for a shorter run")
    assert _files(tmp_path) == before
    assert run.train(compose_cfg([*RUN, "trainer.max_steps=4"]), run_dir=tmp_path)["steps"] == 4  # a requeue


def test_a_shortening_resume_is_one_line_and_exit_1(tmp_path, cache_dir, capfd):
    run_dir = tmp_path / "run"
    assert cli.main(["train", *RUN, "trainer.max_steps=4", f"hydra.run.dir={run_dir}"]) == 0
    before = _files(run_dir)
    capfd.readouterr()
    assert cli.main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 1
    lines = _error_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "it has trained 4 steps, and trainer.max_steps=2 cannot shorten it" in lines[0]
    assert _files(run_dir) == before


def test_a_shortening_refusal_names_what_helps_for_each_resume_setting(tmp_path):
    from eqdeq_cli.runs.resume import check_run_length

    check_run_length(4, 4, tmp_path / "last.pt")  # a requeue of a finished run
    start = "cannot resume {}: it has trained 4 steps, and trainer.max_steps=3 cannot shorten it: set " \
            "trainer.max_steps=4 or more to continue it, evaluate it with eqdeq eval, ".format(tmp_path / "last.pt")
    with pytest.raises(ResumeRefused) as own:
        check_run_length(4, 3, tmp_path / "last.pt")
    assert str(own.value) == start + "or choose another hydra.run.dir for a shorter run"
    with pytest.raises(ResumeRefused) as other:
        check_run_length(4, 3, tmp_path / "last.pt", resume=str(tmp_path))
    assert str(other.value) == start + "or leave resume= out for a new, shorter run"
