"""Preemption: a signal stops training at a step boundary, the run resumes to the same weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY
from eqdeq_cli import cli
from eqdeq_cli.engine import trainer as trainer_mod
from eqdeq_cli.engine.checkpoint import load_checkpoint
from eqdeq_cli.engine.signals import STOP_EXIT_CODE, STOP_SIGNALS, StopOnSignals


@pytest.fixture
def restore_handlers():
    """Put back every stop signal's handler after the test, whatever it installed."""
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


# -- the handler itself ------------------------------------------------------------------------
def test_signal_sets_the_stop_flag_and_chains_the_previous_handler_only_on_request(restore_handlers):
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    signal.signal(signal.SIGUSR2, previous)
    with StopOnSignals() as stop:
        assert signal.getsignal(signal.SIGUSR2) is not previous
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not change which one is reported
        assert stop.event.is_set() and stop.received == signal.SIGUSR2 and stop.signal_name == "SIGUSR2"
        assert calls == []  # nothing is passed on before the checkpoint is written
        stop.chain()
    assert calls == [signal.SIGUSR2]
    assert signal.getsignal(signal.SIGUSR2) is previous
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_default_handlers_are_not_replayed(restore_handlers):
    with StopOnSignals() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        stop.chain()  # SIG_DFL would kill the process: the caller exits with STOP_EXIT_CODE instead
    assert stop.received == signal.SIGUSR1 and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_no_handlers_outside_the_main_thread():
    seen = {}

    def body():
        with StopOnSignals() as stop:
            seen["installed"] = stop.installed
            seen["handler"] = signal.getsignal(signal.SIGUSR1)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == {"installed": False, "handler": signal.getsignal(signal.SIGUSR1)}


# -- the real command, in this process -----------------------------------------------------------
class SignalAt:
    """Wraps ``Trainer.train_step``: sends ``signum`` to this process once ``step`` steps are done."""

    def __init__(self, monkeypatch, step: int, signum: int) -> None:
        original = trainer_mod.Trainer.train_step
        self.sent = False

        def train_step(trainer):
            out = original(trainer)
            if trainer.step == step and not self.sent:
                self.sent = True
                os.kill(os.getpid(), signum)  # handled before train_step returns
            return out

        monkeypatch.setattr(trainer_mod.Trainer, "train_step", train_step)


RUN = [*TINY, "trainer.max_steps=3", "grad=jfb"]  # 2 steps per epoch: the resume crosses an epoch


def _weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def test_signal_stops_the_command_then_the_same_command_resumes_to_the_same_weights(
        tmp_path, monkeypatch, cache_dir, restore_handlers):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main(["train", *RUN, f"hydra.run.dir={whole}"]) == 0

    calls = []

    def previous(signum, frame):  # stands for submitit's requeue handler
        calls.append((signum, (parts / "checkpoints" / "last.pt").is_file(),
                      json.loads((parts / "status.json").read_text())["status"]))

    signal.signal(signal.SIGUSR2, previous)
    with monkeypatch.context() as m:
        SignalAt(m, step=1, signum=signal.SIGUSR2)
        assert cli.main(["train", *RUN, f"hydra.run.dir={parts}"]) == STOP_EXIT_CODE
    status = json.loads((parts / "status.json").read_text())
    assert status["status"] == "stopped" and status["signal"] == "SIGUSR2"
    assert not (parts / "metrics.json").exists()
    assert _weights(parts)["step"] == 1
    assert calls == [(signal.SIGUSR2, True, "stopped")]  # chained after the checkpoint and the status
    assert signal.getsignal(signal.SIGUSR2) is previous  # restored when training ended

    assert cli.main(["train", *RUN, f"hydra.run.dir={parts}"]) == 0
    a, b = _weights(whole), _weights(parts)
    assert a["step"] == b["step"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert json.loads((parts / "status.json").read_text())["status"] == "completed"
    assert json.loads((parts / "metrics.json").read_text())["psnr"] == json.loads((whole / "metrics.json").read_text())["psnr"]


def test_signal_in_a_multirun_stops_the_sweep_and_a_rerun_finishes_it(tmp_path, monkeypatch, cache_dir,
                                                                       restore_handlers):
    sweep = tmp_path / "sweep"
    command = ["train", "-m", *TINY, "trainer.max_steps=2", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    with monkeypatch.context() as m:
        SignalAt(m, step=1, signum=signal.SIGTERM)
        assert cli.main(command) == STOP_EXIT_CODE
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "stopped"
    assert not (sweep / "1").exists()  # the allocation is ending: later jobs do not start
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    assert cli.main(command) == 0
    for job in ("0", "1"):
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "completed"
        assert json.loads((sweep / job / "metrics.json").read_text())["steps"] == 2


def test_a_stop_during_a_jobs_final_evaluation_is_said_and_ends_the_sweep_after_it(tmp_path, monkeypatch, cache_dir,
                                                                                   restore_handlers, capfd):
    sweep = tmp_path / "sweep"
    command = ["train", "-m", *TINY, "trainer.max_steps=2", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    with monkeypatch.context() as m:
        SignalAt(m, step=2, signum=signal.SIGTERM)  # after the last step: the test evaluation runs on
        assert cli.main(command) == STOP_EXIT_CODE
    err = capfd.readouterr().err
    assert "stop requested during the test evaluation: it finishes first" in err
    assert "the sweep ends after this job; run the same command again to continue with the next ones" in err
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "completed"
    assert json.loads((sweep / "0" / "metrics.json").read_text())["steps"] == 2
    assert not (sweep / "1").exists()

    assert cli.main(command) == 0
    assert json.loads((sweep / "1" / "status.json").read_text())["status"] == "completed"


# -- a real process, a real signal ---------------------------------------------------------------
def _command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "eqdeq_cli.cli", "train", *TINY, "trainer.max_steps=30",
            "trainer.checkpoint_every=1", "trainer.eval_every=0", "grad=jfb", "data.n_train=6",
            f"hydra.run.dir={run_dir}"]


def _env(cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "EQDEQ_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_sigusr1_to_a_training_process_then_restart(tmp_path, cache_dir):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    done = subprocess.run(_command(whole), env=_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_command(parts), env=_env(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = parts / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # last.pt appears after the first step: the loop (and its handler) is running
    assert proc.poll() is None, "the run ended before it could be signalled: " + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == STOP_EXIT_CODE, out[-3000:]
    status = json.loads((parts / "status.json").read_text())
    assert status["status"] == "stopped" and status["signal"] == "SIGUSR1"
    assert not (parts / "metrics.json").exists()
    stopped_at = _weights(parts)["step"]
    assert 1 <= stopped_at < 30

    again = subprocess.run(_command(parts), env=_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {last} at step {stopped_at}" in (parts / "train.log").read_text()
    a, b = _weights(whole), _weights(parts)
    assert a["step"] == b["step"] == 30
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_ctrl_c_stops_at_the_step_boundary_with_a_checkpoint_and_a_second_one_aborts(
        tmp_path, monkeypatch, cache_dir, restore_handlers, capfd):
    run_dir = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup / a background job
    with monkeypatch.context() as m:
        SignalAt(m, step=1, signum=signal.SIGINT)
        assert cli.main(["train", *RUN, "trainer.checkpoint_every=100", f"hydra.run.dir={run_dir}"]) == STOP_EXIT_CODE
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "stopped" and status["signal"] == "SIGINT"
    assert _weights(run_dir)["step"] == 1  # written on the stop, not at checkpoint_every
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "run the same command again to resume" in line and "SIGINT" in line]
    assert signal.getsignal(signal.SIGINT) is before  # the handler found is restored
    assert cli.main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 0
    assert _weights(run_dir)["step"] == 3

    with StopOnSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.event.is_set() and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_ctrl_c_aborts_with_one_line_and_leaves_a_stopped_status(
        tmp_path, monkeypatch, cache_dir, restore_handlers, capfd):
    run_dir = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    command = ["train", *RUN, "trainer.checkpoint_every=1", f"hydra.run.dir={run_dir}"]
    original = trainer_mod.Trainer.train_step

    def twice_at_step_2(trainer):
        out = original(trainer)
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # stop at the step boundary ...
            os.kill(os.getpid(), signal.SIGINT)  # ... no: abort now, before step 2 is saved
        return out

    with monkeypatch.context() as m:
        m.setattr(trainer_mod.Trainer, "train_step", twice_at_step_2)
        assert cli.main(command) == 130
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "stopped" and status["signal"] == "SIGINT" and status["aborted"] is True
    assert _weights(run_dir)["step"] == 1  # the last checkpoint written
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "second Ctrl-C" in line and str(run_dir) in line]) == 1
    assert signal.getsignal(signal.SIGINT) is before  # the handler found is restored
    assert cli.main(command) == 0
    assert _weights(run_dir)["step"] == 3
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
