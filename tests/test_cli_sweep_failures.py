"""A sweep whose jobs are refused before they claim their directories still fails, and says why."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import TINY
from eqdeq_cli.commands.hydra_app import Job, other_sweep_hint


def _eqdeq(args, cache_dir, cwd):
    exe = Path(sys.executable).parent / "eqdeq"
    exe = str(exe) if exe.exists() else shutil.which("eqdeq") or "eqdeq"
    env = {**os.environ, "EQDEQ_CACHE_DIR": str(cache_dir)}
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_second_sweep_into_the_same_directory_fails_with_the_list_of_refused_jobs(cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    first = _eqdeq(["train", "-m", *TINY, "seed=0", f"hydra.sweep.dir={sweep}"], cache_dir, tmp_path)
    assert first.returncode == 0, first.stderr
    before = {name: (sweep / "0" / name).read_bytes() for name in ("status.json", "metrics.json", ".hydra/config.yaml")}

    second = _eqdeq(["train", "-m", *TINY, "seed=1", f"hydra.sweep.dir={sweep}"], cache_dir, tmp_path)
    out = second.stdout + second.stderr
    assert second.returncode == 1
    assert "1 job(s) of the sweep failed:" in out
    job = sweep / "0"
    held = " ".join(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))  # as the sweep wrote them
    assert held.endswith(" seed=0")
    hint = (f". {job} holds another job ({held}) of an earlier sweep: use a new hydra.sweep.dir, "
            "or hydra.sweep.subdir='${hydra.job.override_dirname}' to name job directories by their overrides")
    assert f"  {job}: cannot resume {job}/checkpoints/last.pt: it was trained with other settings" in out
    assert out.count(hint) == 2  # the job's error line and the failure list
    assert "Traceback" not in second.stderr
    assert {name: (job / name).read_bytes() for name in before} == before


def _job(run_dir: Path, overrides: list[str], multirun: bool = True) -> Job:
    return Job(run_dir=run_dir, overrides=overrides, multirun=multirun, task="train", record_status=True)


def test_the_other_sweep_sentence_only_when_the_held_job_has_other_overrides(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=0\n- data=tiny\n")
    assert other_sweep_hint(_job(tmp_path, ["data=tiny", "seed=0"])) == ""  # the same job: a default changed
    assert other_sweep_hint(_job(tmp_path, ["data=tiny", "seed=1"], multirun=False)) == ""
    assert other_sweep_hint(_job(tmp_path, ["data=tiny", "seed=1"])) == (
        f". {tmp_path} holds another job (seed=0 data=tiny) of an earlier sweep: use a new hydra.sweep.dir, or "
        "hydra.sweep.subdir='${hydra.job.override_dirname}' to name job directories by their overrides")


def test_a_second_sweep_over_a_resumable_key_does_not_continue_the_first_ones_jobs(cache_dir, tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps=")]
    first = _eqdeq(["train", "-m", *tiny, "trainer.max_steps=1,2", f"hydra.sweep.dir={sweep}"], cache_dir, tmp_path)
    assert first.returncode == 0, first.stderr
    files = [p for p in sorted(sweep.rglob("*")) if p.is_file() and p.suffix != ".log" and p.name != "multirun.yaml"]
    before = {p: p.read_bytes() for p in files}

    second = _eqdeq(["train", "-m", *tiny, "trainer.max_steps=2,3", f"hydra.sweep.dir={sweep}"], cache_dir, tmp_path)
    out = second.stdout + second.stderr
    assert second.returncode == 1 and "2 job(s) of the sweep failed:" in out
    for num, (held, now) in enumerate(((1, 2), (2, 3))):
        assert (f"{sweep / str(num)} holds a job of an earlier sweep (trainer.max_steps={held}), not this one "
                f"(trainer.max_steps={now}): job directories are numbered from 0 in every sweep; use a new "
                "hydra.sweep.dir, or hydra.sweep.subdir='${hydra.job.override_dirname}'") in out
    assert {p: p.read_bytes() for p in files} == before
    # the same sweep again (here with a longer run for every job) continues its own jobs
    again = _eqdeq(["train", "-m", *tiny, "trainer.max_steps=1,2", f"hydra.sweep.dir={sweep}"], cache_dir, tmp_path)
    assert again.returncode == 0, again.stderr


def test_swept_keys_of_the_command_line_and_of_a_search_space(tmp_path):
    from eqdeq_cli.commands.hydra_app import swept_keys

    assert swept_keys(tmp_path) == []  # no multirun.yaml: nothing to check
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["seed=0,1", "trainer.max_steps=3", "model.width=range(8,17,8)"]},
        "sweeper": {"params": {"loss.terms.ei.weight": "tag(log, interval(1e-4, 1.0))", "seed": "0,1"}}}}))
    assert swept_keys(tmp_path) == ["seed", "model.width", "loss.terms.ei.weight"]


def test_an_earlier_sweeps_record_is_kept_beside_its_jobs(tmp_path):
    from eqdeq_cli.commands.hydra_app import keep_earlier_sweep_record

    assert keep_earlier_sweep_record(tmp_path, ["seed=0,1"]) is None  # a new sweep directory
    record = yaml.safe_dump({"hydra": {"overrides": {"task": ["seed=0,1"]}}})
    (tmp_path / "multirun.yaml").write_text(record)
    assert keep_earlier_sweep_record(tmp_path, ["seed=0,1"]) is None  # the same sweep again
    kept = keep_earlier_sweep_record(tmp_path, ["seed=2,3"])
    assert kept is not None and kept.name.startswith("multirun.") and kept.read_text() == record
    assert not (tmp_path / "multirun.yaml").exists()  # Hydra writes the new sweep's record there
