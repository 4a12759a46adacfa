"""A run directory belongs to one run: unique names under concurrency, a lock while it runs."""
from __future__ import annotations

import datetime
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from eqdeq_cli import CONFIG_DIR
from eqdeq_cli.runs.directory import register_resolvers, run_stamp


def _hydra_dirs() -> tuple[str, str]:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    return str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)


def test_two_compositions_in_the_same_second_get_different_directories():
    first, second = _hydra_dirs(), _hydra_dirs()
    assert first[0] != second[0] and first[1] != second[1]
    assert first[0].startswith("outputs/train/") and first[1].startswith("outputs/train/multirun/")
    assert first[0].rsplit("/", 1)[1] == first[1].rsplit("/", 1)[1]  # one stamp per composition


def test_stamps_sort_by_start_time_and_name_the_process():
    t = datetime.datetime(2026, 1, 2, 3, 4, 5, 60)
    stamps = [run_stamp(t, pid=99, env={}), run_stamp(t + datetime.timedelta(microseconds=5), pid=7, env={}),
              run_stamp(t + datetime.timedelta(seconds=1), pid=1, env={})]
    assert stamps[0] == "2026-01-02_03-04-05.000060-p99"
    assert sorted(stamps) == stamps
    assert run_stamp(t, pid=1, env={}) != run_stamp(t, pid=2, env={})


def test_the_ranks_of_a_launch_share_the_stamp():
    t = datetime.datetime(2026, 1, 2, 3, 4, 5, 60)
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "n1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "abc"}
    assert run_stamp(t, pid=1, env=env) == run_stamp(t, pid=2, env={**env, "RANK": "1"}) == "2026-01-02_03-04-05-rabc"


def _eqdeq() -> str:
    exe = Path(sys.executable).parent / "eqdeq"
    return str(exe) if exe.exists() else shutil.which("eqdeq") or "eqdeq"


def _start(args, cwd, cache_dir):
    env = {**os.environ, "EQDEQ_CACHE_DIR": str(cache_dir)}
    return subprocess.Popen([_eqdeq(), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_two_trainings_started_together_get_their_own_directories(tmp_path, cache_dir):
    procs = [_start(["train", "debug=smoke", f"seed={s}"], tmp_path, cache_dir) for s in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sorted((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 2
    seeds = sorted(OmegaConf.load(r / ".hydra" / "config.yaml").seed for r in runs)
    assert seeds == [0, 1]
    for r in runs:
        assert json.loads((r / "metrics.json").read_text())["steps"] == 2
        assert (r / "train.log").read_text().count("run directory:") == 1


HOLD = ("import sys, time\nfrom eqdeq_cli.runs.directory import hold_run_dir\n"
        "lock = hold_run_dir(sys.argv[1])\nprint('held', flush=True)\ntime.sleep(120)\n")


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_in_a_running_runs_directory_stops_at_once(tmp_path, capfd, cache_dir):
    from eqdeq_cli import cli

    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")  # the running run's config
    try:
        assert cli.main(["train", "debug=smoke", f"hydra.run.dir={run_dir}"]) == 1
        err = capfd.readouterr().err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if "in use by another run" in line]
        assert len(lines) == 1 and str(run_dir) in lines[0] and f"PID {holder.pid}" in lines[0], err
        assert not (run_dir / "status.json").exists() and not (run_dir / "checkpoints").exists()
        assert (run_dir / ".hydra" / "config.yaml").read_text() == "seed: 0\n"
        assert cli.main(["eval", f"ckpt={run_dir}", f"hydra.run.dir={run_dir}"]) == 1
        assert f"PID {holder.pid}" in capfd.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: the directory is free again
    assert cli.main(["train", "debug=smoke", f"hydra.run.dir={run_dir}"]) == 0
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    hydra_files = run_dir / ".hydra"
    assert OmegaConf.load(hydra_files / "config.yaml").trainer.max_steps == 2
    assert OmegaConf.load(hydra_files / "overrides.yaml") == ["debug=smoke"]  # as Hydra writes it
    assert OmegaConf.load(hydra_files / "hydra.yaml").hydra.output_subdir == ".hydra"


def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path, capfd, monkeypatch, cache_dir):
    from eqdeq_cli import cli

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o555)
        reason = os.strerror(errno.EACCES)
    else:  # chmod does not stop root: the file system's refusal (a read-only mount) is simulated
        reason = os.strerror(errno.EROFS)
        touch = Path.touch

        def read_only(self, *args, **kwargs):
            if locked in self.parents:
                raise OSError(errno.EROFS, reason, str(self))
            return touch(self, *args, **kwargs)

        monkeypatch.setattr(Path, "touch", read_only)
    try:
        for command, key, where in ((["train", "debug=smoke"], "hydra.run.dir", locked / "run"),
                                    (["train", "-m", "debug=smoke", "seed=0,1"], "hydra.sweep.dir", locked / "sweep"),
                                    (["eval", "ckpt=x.pt"], "hydra.run.dir", locked)):
            assert cli.main([*command, f"{key}={where}"]) == 1
            err = capfd.readouterr().err
            assert "Traceback" not in err
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].endswith(
                f"[ERROR] cannot write in the run directory {where} ({reason}): choose a writable {key}"), err
            assert not any(locked.rglob("*.log")) and not any(locked.rglob("status.json"))
    finally:
        locked.chmod(0o755)
