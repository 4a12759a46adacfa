"""The ``eqdeq`` command: the output contract, evaluation, errors, and the installed script."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from conftest import TINY
from eqdeq_cli import cli

CONTRACT = [".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.pt", "checkpoints/best.pt",
            "metrics.csv", "metrics.json", "train.log", "status.json", "images/test.png",
            "reconstructions/test.h5"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache_dir):
    """One ``eqdeq train debug=smoke`` run through the real command, shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    assert cli.main(["train", "debug=smoke", f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


def test_smoke_preset_writes_the_output_contract(smoke_run):
    for name in CONTRACT:
        assert (smoke_run / name).is_file(), name
    assert any((smoke_run / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in ("psnr", "ssim", "psnr_init", "ssim_init", "iters_mean", "residual_mean", "train_time_s", "steps"):
        assert key in metrics, key
    assert metrics["steps"] == 2
    rows = (smoke_run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,split,time_s") and [r.split(",")[1] for r in rows[1:]] == ["val", "test"]
    with h5py.File(smoke_run / "reconstructions" / "test.h5") as f:
        assert {"x", "y", "x_init", "x_hat"} <= set(f)
    assert json.loads((smoke_run / "status.json").read_text())["status"] == "completed"
    assert "test: psnr=" in (smoke_run / "train.log").read_text()


def test_eval_reproduces_the_final_metrics(smoke_run, tmp_path):
    """The training's final metrics are of the checkpoint metrics.json names, last.pt."""
    final = json.loads((smoke_run / "metrics.json").read_text())
    assert final["checkpoint"] == "checkpoints/last.pt"
    assert cli.main(["eval", f"ckpt={smoke_run / final['checkpoint']}", f"hydra.run.dir={tmp_path}"]) == 0
    again = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("psnr", "ssim", "psnr_init", "ssim_init", "iters_mean", "residual_mean"):
        assert again[key] == pytest.approx(final[key], rel=1e-6, abs=1e-9), key


def test_eval_overrides_replace_the_saved_config(smoke_run, tmp_path):
    assert cli.main(["eval", f"ckpt={smoke_run}", "solver.eval.max_iter=1", "split=val",
                     f"hydra.run.dir={tmp_path}"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["iters_mean"] == 1 and metrics["split"] == "val"


def _no_traceback(err: str) -> None:
    assert "Traceback" not in err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capfd, cache_dir):
    code = cli.main(["eval", f"ckpt={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path / 'e'}"])
    err = capfd.readouterr().err
    assert code != 0 and "checkpoint not found" in err and "nope.pt" in err
    _no_traceback(err)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capfd, cache_dir):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code = cli.main(["eval", f"ckpt={bad}", f"hydra.run.dir={tmp_path / 'e'}"])
    err = capfd.readouterr().err
    assert code != 0 and "corrupt" in err
    _no_traceback(err)


def test_eval_without_checkpoint_is_a_clear_error(tmp_path, capfd, cache_dir):
    code = cli.main(["eval", f"hydra.run.dir={tmp_path}"])
    err = capfd.readouterr().err
    assert code != 0 and "ckpt=PATH" in err
    _no_traceback(err)


@pytest.mark.parametrize("override,expected", [
    ("trainer.max_stepz=3", "max_stepz"),
    ("solver=andersen", "andersen"),
    ("physics=ct physics.n_view=3", "n_view"),
])
def test_misspelt_overrides_fail_with_hydras_message(tmp_path, capfd, override, expected, cache_dir):
    code = cli.main(["train", *override.split(), f"hydra.run.dir={tmp_path}"])
    err = capfd.readouterr().err
    assert code != 0 and expected in err
    _no_traceback(err)


@pytest.mark.parametrize("override,expected", [
    ("regularizer=null", "regularizer=null: regularizer is a config group, set by the name of one of its options "
                         "(jacobian, none, spectral); regularizer=none removes it"),
    ("physics/noise=null", "physics/noise=null: physics/noise is a config group, set by the name of one of its "
                           "options (gaussian, none, poisson, poisson_gaussian); physics/noise=none removes it"),
])
def test_a_config_group_set_to_null_names_its_options(tmp_path, capfd, override, expected):
    code = cli.main(["train", override, f"hydra.run.dir={tmp_path}"])
    err = capfd.readouterr().err
    assert code == 1 and err.endswith(f": error: {expected}\n") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_user_error_in_a_run_is_one_line_without_traceback(tmp_path, capfd, cache_dir):
    code = cli.main(["train", *TINY, "physics.img_size=24", f"hydra.run.dir={tmp_path}"])
    err = capfd.readouterr().err
    assert code == 1 and "(1, 24, 24)" in err
    _no_traceback(err)
    assert "Traceback" in (tmp_path / "train.log").read_text()  # the log file keeps the details
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"


def test_unknown_command_and_help(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("train", "eval", "collect", "analyze"))


# -- the installed console script -----------------------------------------------------------
def _eqdeq() -> str:
    exe = Path(sys.executable).parent / "eqdeq"
    return str(exe) if exe.exists() else shutil.which("eqdeq") or "eqdeq"


def _run(args, cache_dir, cwd, **env):
    full_env = {**os.environ, "EQDEQ_CACHE_DIR": str(cache_dir), **env}
    return subprocess.run([_eqdeq(), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def test_console_script_help_and_config(cache_dir, tmp_path):
    top = _run(["--help"], cache_dir, tmp_path)
    assert top.returncode == 0 and "train" in top.stdout and "eval" in top.stdout
    app = _run(["train", "--help"], cache_dir, tmp_path)
    assert app.returncode == 0
    for group in ("physics: ct, inpainting, mri", "grad: implicit, jfb, unrolled", "solver: anderson, fixed_point"):
        assert group in app.stdout, group
    job = _run(["train", "physics=mri", "--cfg", "job"], cache_dir, tmp_path)
    assert job.returncode == 0 and "MRICartesian" in job.stdout and "task: train" in job.stdout
    assert "\ntrust: []\n" in job.stdout  # the checkpoint allowlist, set with trust=[...]


def test_console_script_shell_completion(cache_dir, tmp_path):
    install = _run(["train", "-sc", "install=bash"], cache_dir, tmp_path)
    assert install.returncode == 0 and "complete -o nospace -o default -F hydra_bash_completion eqdeq" in install.stdout
    query = _run(["-sc", "query=bash"], cache_dir, tmp_path, COMP_LINE="eqdeq train physics=")
    assert query.returncode == 0 and {"physics=ct", "physics=mri", "physics=inpainting"} <= set(query.stdout.split())
    commands = _run(["-sc", "query=bash"], cache_dir, tmp_path, COMP_LINE="eqdeq ev")
    assert commands.stdout.split() == ["eval"]


def test_console_script_multirun_keeps_going_after_a_failed_job(cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _run(["train", "-m", *TINY, "trainer.max_steps=1,0", f"hydra.sweep.dir={sweep}"], cache_dir, tmp_path)
    assert proc.returncode != 0
    ok, failed = json.loads((sweep / "0" / "status.json").read_text()), json.loads((sweep / "1" / "status.json").read_text())
    assert ok["status"] == "completed" and (sweep / "0" / "metrics.json").is_file()
    assert failed["status"] == "failed" and "max_steps" in failed["error"]
    assert "max_steps" in (sweep / "1" / "train.log").read_text()
    assert "1 job(s) of the sweep failed" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_console_script_multirun_sweep(cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _run(["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"], cache_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["steps"] == 1
        assert (sweep / job / "checkpoints" / "last.pt").is_file()


def test_help_of_a_hydra_command_does_not_import_the_library():
    """``eqdeq train --help`` only composes configs: torch is imported when a job runs."""
    code = ("import sys, contextlib, io\n"
            "from eqdeq_cli import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert cli.main(['train', '--help']) == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported for --help'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_compile_with_a_replayed_backward_is_refused_in_one_line(tmp_path, capfd):
    assert cli.main(["train", "debug=smoke", "trainer.compile=true", f"hydra.run.dir={tmp_path}"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert ("trainer.compile=true cannot be used with grad=implicit, trainer.contraction_every=50: each "
            "differentiates the compiled denoiser more than once") in err
    assert not (tmp_path / "checkpoints").exists()
