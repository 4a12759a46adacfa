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


@pytest.mark.parametrize("script", [*SCRIPTS, SLURM_DIR / "common.sh", SLURM_DIR / "node_relay.sh"],
                         ids=lambda p: p.name)
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "EQDEQ_", "CUDA_VISIBLE", "OMP_NUM_THREADS"))}
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
        elif line in ("started", "TERM received") or line.startswith("~ "):
            continue  # events, not calls
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


# The worker sees its thread count; torchrun's shim records it as an event.
RECORD_THREADS = 'echo "~ OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}" >> "$SHIM_LOG"'


def events(tmp_path: Path) -> list[str]:
    return [line[2:] for line in (tmp_path / "calls.log").read_text().splitlines() if line.startswith("~ ")]


def test_multi_node_uses_srun_and_c10d_rendezvous_on_first_host(tmp_path: Path) -> None:
    env = make_env(tmp_path, RECORD_THREADS, SLURM_GPUS_ON_NODE="8", SLURM_JOB_NUM_NODES="2",
                   SLURM_JOB_NODELIST="node[07-08]", SLURM_CPUS_PER_TASK="32")
    res = run_script("multi_node.sbatch", ["trainer.batch_size=64"], env)
    assert res.returncode == 0, res.stderr
    scontrol, srun, torchrun = calls(tmp_path)
    assert scontrol == ["scontrol", "show", "hostnames", "node[07-08]"]
    # srun does not inherit sbatch's --cpus-per-task (SLURM >= 22.05): it is passed explicitly
    assert srun[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=32", "--kill-on-bad-exit=1"]
    assert torchrun == [
        "torchrun", "--nnodes=2", "--nproc_per_node=8", "--rdzv_id=1234", "--rdzv_backend=c10d",
        "--rdzv_endpoint=node07:21234", "--no-python", "python", "-m", "eqdeq_cli.cli", "train",
        f"hydra.run.dir={tmp_path / 'out' / 'ctjob' / '1234'}", "trainer.batch_size=64",
    ]
    # on every node srun runs the signal relay, which runs exactly that torchrun command
    assert srun[5:] == ["bash", str(SLURM_DIR / "node_relay.sh"), *torchrun]
    assert events(tmp_path) == ["OMP_NUM_THREADS=4"]  # 32 CPUs shared by 8 processes, not torchrun's 1


def test_thread_count_without_a_cpu_request_or_when_set(tmp_path: Path) -> None:
    env = make_env(tmp_path, RECORD_THREADS, SLURM_GPUS_ON_NODE="2", SLURM_JOB_NODELIST="node07")
    assert run_script("multi_node.sbatch", [], env).returncode == 0
    assert not any(a.startswith("--cpus-per-task") for a in calls(tmp_path)[1])
    env = make_env(tmp_path, RECORD_THREADS, SLURM_CPUS_PER_TASK="3", SLURM_GPUS_ON_NODE="4")
    assert run_script("single_node.sbatch", [], env).returncode == 0  # fewer CPUs than processes: one each
    env = make_env(tmp_path, RECORD_THREADS, SLURM_CPUS_PER_TASK="16", OMP_NUM_THREADS="6")
    assert run_script("single_node.sbatch", [], env).returncode == 0
    assert events(tmp_path) == ["OMP_NUM_THREADS=unset", "OMP_NUM_THREADS=1", "OMP_NUM_THREADS=6"]


@pytest.mark.parametrize("job_id,override,port", [("1234", None, 21234), ("98765", None, 28765),
                                                  ("88765", None, 28765), ("1234", "31000", 31000)])
def test_rendezvous_port_follows_the_job_id(tmp_path: Path, job_id: str, override: str | None, port: int) -> None:
    extra = {"EQDEQ_RDZV_PORT": override} if override else {}
    env = make_env(tmp_path, SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST="node[07-08]", **extra)
    assert run_script("multi_node.sbatch", [], env).returncode == 0
    assert f"--rdzv_endpoint=node07:{port}" in calls(tmp_path)[-1]


@pytest.mark.parametrize("variable,value,message", [
    ("EQDEQ_RDZV_PORT", "80", "EQDEQ_RDZV_PORT=80 is not a port number in 1024-65535"),
    ("EQDEQ_RDZV_PORT", "http", "EQDEQ_RDZV_PORT=http is not a port number in 1024-65535"),
    ("EQDEQ_FORWARD_SIGNAL", "TERM", "EQDEQ_FORWARD_SIGNAL=TERM: srun does not pass that signal on to its tasks "
                                     "(it kills or reports them); use USR1 or USR2"),
])
def test_multi_node_refuses_bad_settings(tmp_path: Path, variable: str, value: str, message: str) -> None:
    env = make_env(tmp_path, SLURM_JOB_NODELIST="node[07-08]", **{variable: value})
    res = run_script("multi_node.sbatch", [], env)
    assert res.returncode == 2 and res.stderr.strip().endswith(message), res.stderr
    log = tmp_path / "calls.log"
    assert not log.exists() or not any(c[0] in ("srun", "torchrun") for c in calls(tmp_path))


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


def signal_running_job(tmp_path: Path, env: dict[str, str], sig: int,
                       script: str = "single_node.sbatch", started: int = 1) -> tuple[int, str]:
    """Start `script`, wait for `started` training shims, send `sig` to the batch shell."""
    proc = subprocess.Popen(
        ["bash", str(SLURM_DIR / script), "seed=0"], env=env, cwd=env["SLURM_SUBMIT_DIR"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    log = tmp_path / "calls.log"
    deadline = time.monotonic() + 60
    while not (log.is_file() and log.read_text().count("started") >= started):
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


# An srun as SLURM's: signals it catches go to its task unchanged, except SIGTERM (and HUP,
# QUIT), on which it kills the task outright ("forcing job termination").
REAL_SRUN_BODY = """
while [[ "$1" == --* ]]; do shift; done
"$@" &
task=$!
trap 'echo "~ srun got USR1"; kill -USR1 $task' USR1
trap 'kill -USR2 $task' USR2
trap 'echo "~ srun: forcing job termination"; kill -KILL $task' TERM
status=0
wait $task || status=$?
while kill -0 $task 2>/dev/null; do status=0; wait $task || status=$?; done
exit $status
""".replace('echo "~', 'echo >> "$SHIM_LOG" "~')


@pytest.mark.skipif(shutil.which("seq") is None, reason="needs coreutils")
def test_multi_node_time_limit_reaches_torchrun_as_sigterm_through_srun(tmp_path: Path) -> None:
    env = make_env(tmp_path, torchrun_body=TRAINING_BODY, SHIM_EXIT="75", SLURM_JOB_NODELIST="node[07-08]")
    (tmp_path / "shims" / "srun").write_text(SHIM.format(name="srun", body=REAL_SRUN_BODY))
    rc, err = signal_running_job(tmp_path, env, signal.SIGUSR1, "multi_node.sbatch")
    assert rc == 0, err
    text = (tmp_path / "calls.log").read_text()
    # srun passed USR1 on (a SIGTERM would have killed torchrun), the relay made it the
    # SIGTERM torchrun forwards, training exited after its checkpoint, then the requeue
    assert "forcing job termination" not in text
    assert (text.index("started") < text.index("~ srun got USR1") < text.index("TERM received")
            < text.index("scontrol\nrequeue\n1234\nEND"))
    assert "training exited with status 75" in err


# A torchrun that records every SIGTERM and keeps running a moment after the first, so that
# a second one would be seen.
COUNTING_BODY = """
trap 'echo "TERM received" >> "$SHIM_LOG"; stop=1' TERM
stop=0
echo started >> "$SHIM_LOG"
for _ in $(seq 200); do sleep 0.05; (( stop )) && break; done
sleep 0.3
exit "${SHIM_EXIT:-0}"
"""


@pytest.mark.skipif(shutil.which("seq") is None, reason="needs coreutils")
@pytest.mark.parametrize("sig,to_group", [(signal.SIGUSR1, False), (signal.SIGUSR2, False), (signal.SIGTERM, True)])
def test_node_relay_turns_usr_signals_into_one_sigterm(tmp_path: Path, sig: int, to_group: bool) -> None:
    env = make_env(tmp_path, torchrun_body=COUNTING_BODY, SHIM_EXIT="75")
    proc = subprocess.Popen(["bash", str(SLURM_DIR / "node_relay.sh"), "torchrun", "--nnodes=2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = tmp_path / "calls.log"
    deadline = time.monotonic() + 30
    while not (log.is_file() and "started" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "torchrun shim never started"
        time.sleep(0.02)
    if to_group:  # SLURM's own SIGTERM (scancel, preemption) reaches every process of the step
        os.killpg(proc.pid, sig)
    else:  # srun passes SIGUSR1 / SIGUSR2 to its task, the relay
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err  # torchrun's exit status comes back through the relay
    assert log.read_text().count("TERM received") == 1
    assert calls(tmp_path) == [["torchrun", "--nnodes=2"]]


def _script_environment() -> dict[str, str]:
    """The environment common.sh leaves for the launcher."""
    out = subprocess.run(["bash", "-c", f"source {SLURM_DIR / 'common.sh'} && env -0"], capture_output=True,
                         check=True, env={k: v for k, v in os.environ.items()
                                          if not k.startswith(("PET_", "TORCH_ELASTIC", "TORCHELASTIC"))})
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


def test_torchrun_started_by_the_scripts_forwards_usr_signals_and_waits_for_checkpoints() -> None:
    pytest.importorskip("torch")
    env = _script_environment()
    code = ("from torch.distributed.run import config_from_args, get_args_parser\n"
            "args = get_args_parser().parse_args(['--nproc_per_node=2', '--no-python', 'true'])\n"
            "config = config_from_args(args)[0]\n"
            "print(getattr(config, 'signals_to_handle', '-'), config.shutdown_timeout)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    handled, timeout = proc.stdout.split()
    if handled == "-":
        pytest.skip("this torchrun has no --signals-to-handle")
    assert {"SIGTERM", "SIGUSR1", "SIGUSR2"} <= set(handled.split(",")) and timeout == "100"


# A training process under the real torchrun: records the signal that reaches it and
# exits as eqdeq does after its checkpoint (75).
WORKER = """#!/bin/bash
trap 'echo "~ worker $RANK got SIGTERM" >> "$SHIM_LOG"; exit 75' TERM
trap 'echo "~ worker $RANK got SIGUSR1" >> "$SHIM_LOG"; exit 75' USR1
echo started >> "$SHIM_LOG"
for _ in $(seq 1200); do sleep 0.05; done
exit 3
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("seq") is None, reason="needs coreutils")
@pytest.mark.parametrize("script", ["single_node.sbatch", "multi_node.sbatch"])
def test_time_limit_signal_reaches_the_workers_of_the_real_torchrun(tmp_path: Path, script: str) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    worker = tmp_path / "worker.sh"
    worker.write_text(WORKER)
    worker.chmod(0o755)
    env = make_env(tmp_path, TORCHRUN=str(torchrun), EQDEQ_CMD=str(worker), EQDEQ_NPROC="2",
                   SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="1", EQDEQ_RDZV_PORT=str(_free_port()))
    (tmp_path / "shims" / "srun").write_text(SHIM.format(name="srun", body=REAL_SRUN_BODY))
    (tmp_path / "shims" / "scontrol").write_text(SHIM.format(
        name="scontrol", body='[[ "$1" == show ]] && echo localhost; exit 0'))
    # (both workers running: torchrun leaves workers it is still starting without a signal)
    rc, err = signal_running_job(tmp_path, env, signal.SIGUSR1, script, started=2)
    assert rc == 0, err
    text = (tmp_path / "calls.log").read_text()
    assert sorted(events(tmp_path))[-2:] == ["worker 0 got SIGTERM", "worker 1 got SIGTERM"], text
    assert text.rindex("got SIGTERM") < text.index("scontrol\nrequeue\n1234\nEND")
