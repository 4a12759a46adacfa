"""The sbatch scripts, run outside SLURM with `torchrun`, `srun` and `scontrol` replaced by shims."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "scripts" / "slurm"
SCRIPTS = sorted(SLURM_DIR.glob("*.sbatch"))

# Each shim appends "<name>" and then one argument per line to $SHIM_LOG, then an "END" line.
SHIM = """#!/bin/bash
{{ echo "{name}"; for a in "$@"; do echo "$a"; done; echo END; }} >> "$SHIM_LOG"
{body}
"""
# `scontrol show hostnames LIST` prints the hosts of a fake node list.
SCONTROL_BODY = 'if [[ "$1" == show && "$2" == hostnames ]]; then printf "node07\\nnode08\\n"; fi'
# `srun OPTIONS CMD...` runs CMD (here: once, on "every node").
SRUN_BODY = 'while [[ "$1" == --* ]]; do shift; done; exec "$@"'
# A torchrun that behaves like a training run waiting to be preempted: on SIGTERM it
# "checkpoints", optionally writes metrics.json ($SHIM_DONE), and exits with $SHIM_EXIT.
TRAINING_BODY = """
trap 'echo "TERM received" >> "$SHIM_LOG"; [[ -n "${SHIM_DONE:-}" ]] && touch "$SHIM_DONE"; exit "${SHIM_EXIT:-0}"' TERM
echo started >> "$SHIM_LOG"
for _ in $(seq 200); do sleep 0.05; done
exit 3
"""


def test_scripts_exist() -> None:
    assert [p.name for p in SCRIPTS] == ["array_sweep.sbatch", "multi_node.sbatch", "single_node.sbatch"]


@pytest.mark.parametrize("script", [*SCRIPTS, SLURM_DIR / "common.sh"], ids=lambda p: p.name)
def test_bash_syntax_and_sbatch_header(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    if script.suffix == ".sbatch":
        text = script.read_text()
        for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"):
            assert line in text.splitlines(), f"{script.name} lacks {line!r}"


def make_env(tmp_path: Path, torchrun_body: str = "", **slurm: str) -> dict[str, str]:
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    for name, body in (("torchrun", torchrun_body), ("srun", SRUN_BODY), ("scontrol", SCONTROL_BODY)):
        path = shims / name
        path.write_text(SHIM.format(name=name, body=body))
        path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "EQDEQ_", "CUDA_VISIBLE"))}
    env.update(
        PATH=f"{shims}{os.pathsep}{env['PATH']}",
        SHIM_LOG=str(tmp_path / "calls.log"),
        SLURM_SUBMIT_DIR=str(tmp_path),
        SLURM_JOB_ID="1234",
        SLURM_JOB_NAME="ctjob",
        EQDEQ_OUTPUT_ROOT=str(tmp_path / "out"),
    )
    env.update(slurm)
    return env


def calls(tmp_path: Path) -> list[list[str]]:
    """The recorded shim invocations: [name, arg1, arg2, ...] each."""
    out: list[list[str]] = []
    current: list[str] = []
    for line in (tmp_path / "calls.log").read_text().splitlines():
        if line == "END":
            out.append(current)
            current = []
        elif line in ("started", "TERM received"):
            continue
        else:
            current.append(line)
    return out


def run_script(name: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SLURM_DIR / name), *args], env=env, cwd=env["SLURM_SUBMIT_DIR"],
        capture_output=True, text=True, timeout=60,
    )


def test_single_node_builds_torchrun_command(tmp_path: Path) -> None:
    env = make_env(tmp_path, SLURM_GPUS_ON_NODE="4")
    res = run_script("single_node.sbatch", ["physics=ct", "grad=implicit"], env)
    assert res.returncode == 0, res.stderr
    run_dir = tmp_path / "out" / "ctjob" / "1234"
    assert calls(tmp_path) == [[
        "torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=4", "--no-python",
        "python", "-m", "eqdeq_cli.cli", "train", f"hydra.run.dir={run_dir}", "physics=ct", "grad=implicit",
    ]]
    assert run_dir.is_dir()


def test_single_node_gpu_count_fallbacks_and_overrides(tmp_path: Path) -> None:
    env = make_env(tmp_path, CUDA_VISIBLE_DEVICES="0,1,3", EQDEQ_CMD="eqdeq train", EQDEQ_RUN_DIR=str(tmp_path / "fixed"))
    assert run_script("single_node.sbatch", ["seed=1"], env).returncode == 0
    env = make_env(tmp_path)  # CPU-only job: one process
    assert run_script("single_node.sbatch", [], env).returncode == 0
    first, second = calls(tmp_path)
    assert first == ["torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=3", "--no-python",
                     "eqdeq", "train", f"hydra.run.dir={tmp_path / 'fixed'}", "seed=1"]
    assert "--nproc_per_node=1" in second


def test_single_node_passes_training_failure_through(tmp_path: Path) -> None:
    env = make_env(tmp_path, torchrun_body="exit 7")
    res = run_script("single_node.sbatch", [], env)
    assert res.returncode == 7
    assert not any(c[0] == "scontrol" for c in calls(tmp_path))  # a crash is not requeued


def test_multi_node_uses_srun_and_c10d_rendezvous_on_first_host(tmp_path: Path) -> None:
    env = make_env(tmp_path, SLURM_GPUS_ON_NODE="8", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="node[07-08]")
    res = run_script("multi_node.sbatch", ["trainer.batch_size=64"], env)
    assert res.returncode == 0, res.stderr
    scontrol, srun, torchrun = calls(tmp_path)
    assert scontrol == ["scontrol", "show", "hostnames", "node[07-08]"]
    assert srun[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert torchrun == [
        "torchrun", "--nnodes=2", "--nproc_per_node=8", "--rdzv_id=1234", "--rdzv_backend=c10d",
        "--rdzv_endpoint=node07:29500", "--no-python", "python", "-m", "eqdeq_cli.cli", "train",
        f"hydra.run.dir={tmp_path / 'out' / 'ctjob' / '1234'}", "trainer.batch_size=64",
    ]
    assert srun[4:] == torchrun  # srun runs exactly that torchrun command on every node


def write_sweep_file(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("# grads x seeds\ngrad=implicit seed=0\n\ngrad=implicit seed=1\n  # comment\ngrad=jfb seed=0\n")
    return sweep


@pytest.mark.parametrize("task,expected", [("0", ["grad=implicit", "seed=0"]), ("2", ["grad=jfb", "seed=0"])])
def test_array_task_runs_its_line(tmp_path: Path, task: str, expected: list[str]) -> None:
    env = make_env(tmp_path, SLURM_ARRAY_JOB_ID="900", SLURM_ARRAY_TASK_ID=task, SLURM_JOB_ID="917")
    res = run_script("array_sweep.sbatch", [str(write_sweep_file(tmp_path)), "debug=smoke"], env)
    assert res.returncode == 0, res.stderr
    (call,) = calls(tmp_path)
    run_dir = tmp_path / "out" / "ctjob" / "900" / task  # stable under requeue, a sweep dir layout
    assert call[-4:] == [f"hydra.run.dir={run_dir}", "debug=smoke", *expected]


def test_array_task_out_of_range_is_a_clear_error(tmp_path: Path) -> None:
    env = make_env(tmp_path, SLURM_ARRAY_JOB_ID="900", SLURM_ARRAY_TASK_ID="3")
    res = run_script("array_sweep.sbatch", [str(write_sweep_file(tmp_path))], env)
    assert res.returncode == 2
    assert "array task 3 has no line" in res.stderr and "--array=0-2" in res.stderr
    res = run_script("array_sweep.sbatch", [str(tmp_path / "missing.txt")], env)
    assert res.returncode == 2 and "sweep file not found" in res.stderr


def test_make_sweep_file() -> None:
    sys.path.insert(0, str(SLURM_DIR))
    try:
        import make_sweep_file
    finally:
        sys.path.remove(str(SLURM_DIR))
    assert make_sweep_file.sweep_lines(["grad=implicit,jfb", "seed=0,1", "model.k=[1,2]"]) == [
        "grad=implicit seed=0 model.k=[1,2]",
        "grad=implicit seed=1 model.k=[1,2]",
        "grad=jfb seed=0 model.k=[1,2]",
        "grad=jfb seed=1 model.k=[1,2]",
    ]
    with pytest.raises(ValueError, match="'oops'"):
        make_sweep_file.sweep_lines(["oops"])


def signal_running_job(tmp_path: Path, env: dict[str, str], sig: int) -> tuple[int, str]:
    """Start single_node.sbatch, wait for the training shim, send `sig` to the batch shell."""
    proc = subprocess.Popen(
        ["bash", str(SLURM_DIR / "single_node.sbatch"), "seed=0"], env=env, cwd=env["SLURM_SUBMIT_DIR"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    log = tmp_path / "calls.log"
    deadline = time.monotonic() + 30
    while not (log.is_file() and "started" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "training shim never started"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


@pytest.mark.skipif(shutil.which("seq") is None, reason="needs coreutils")
def test_usr1_is_forwarded_then_job_requeued(tmp_path: Path) -> None:
    env = make_env(tmp_path, torchrun_body=TRAINING_BODY, SHIM_EXIT="0")
    rc, err = signal_running_job(tmp_path, env, signal.SIGUSR1)
    assert rc == 0, err
    text = (tmp_path / "calls.log").read_text()
    # order: training started, got TERM (checkpoint), exited, then the requeue
    assert text.index("started") < text.index("TERM received") < text.index("scontrol\nrequeue\n1234\nEND")
    assert "restart 1 of 3" in err


def test_no_requeue_after_max_restarts_or_completion(tmp_path: Path) -> None:
    env = make_env(tmp_path, torchrun_body=TRAINING_BODY, SHIM_EXIT="5", SLURM_RESTART_COUNT="3")
    rc, err = signal_running_job(tmp_path, env, signal.SIGUSR1)
    assert rc == 5 and "already restarted 3 times" in err
    assert not any(c[0] == "scontrol" for c in calls(tmp_path))

    (tmp_path / "calls.log").unlink()
    done = tmp_path / "out" / "ctjob" / "1234" / "metrics.json"
    env = make_env(tmp_path, torchrun_body=TRAINING_BODY, SHIM_EXIT="0", SHIM_DONE=str(done))
    rc, err = signal_running_job(tmp_path, env, signal.SIGUSR1)
    assert rc == 0 and "not requeueing" in err
    assert not any(c[0] == "scontrol" for c in calls(tmp_path))


def test_sigterm_is_forwarded_without_requeue(tmp_path: Path) -> None:
    # scancel or preemption by the scheduler: SLURM requeues (or not) by itself
    env = make_env(tmp_path, torchrun_body=TRAINING_BODY, SHIM_EXIT="0")
    rc, err = signal_running_job(tmp_path, env, signal.SIGTERM)
    assert rc == 0, err
    text = (tmp_path / "calls.log").read_text()
    assert "TERM received" in text and "scontrol" not in text
