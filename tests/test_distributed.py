"""Data-parallel training: launch detection, batch slicing, global-batch random draws,
collectives over real gloo processes, and two processes training like one (slow)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from conftest import REPO, TINY
from eqdeq_cli.engine.distributed import (
    GlobalBatchDraws,
    Launch,
    detect_launch,
    first_slurm_host,
    init_distributed,
    rank_slice,
    shard_range,
    shutdown_distributed,
)


# -- where a process sits ----------------------------------------------------------------------
def test_rank_slices_partition_the_global_batch_in_order():
    for world in (1, 2, 4):
        parts = [torch.arange(8)[rank_slice(8, r, world)] for r in range(world)]
        assert torch.equal(torch.cat(parts), torch.arange(8))
        assert {len(p) for p in parts} == {8 // world}
    with pytest.raises(ValueError, match=r"batch_size=6.*multiple.*\(4\).*batch_size=8"):
        rank_slice(6, 0, 4)
    with pytest.raises(ValueError, match="rank 2"):
        rank_slice(8, 2, 2)


def test_evaluation_shards_cover_the_split_once_rank_zero_first():
    for n, world in ((7, 2), (2, 3), (9, 4), (5, 1)):
        shards = [shard_range(n, r, world) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1 and shards[0].start == 0


def test_first_host_of_a_slurm_node_list():
    assert first_slurm_host("node07") == "node07"
    assert first_slurm_host("gpu[03-05,9],cpu1") == "gpu03"
    assert first_slurm_host("a1,b2") == "a1"
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        first_slurm_host("")


def test_launch_detection_from_torchrun_and_srun_variables(caplog):
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h0", "MASTER_PORT": "1234",
                "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}  # srun torchrun: torchrun's variables win
    assert detect_launch(torchrun) == Launch(3, 4, 1, "h0", 1234, "torchrun")
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[12-13]"}
    assert detect_launch(srun) == Launch(5, 8, 1, "gpu12", 29500, "srun")
    # within a job the port follows the job id, so jobs sharing their first node do not collide
    assert detect_launch({**srun, "SLURM_JOB_ID": "4711234"}).master_port == 21234
    assert detect_launch({**srun, "SLURM_JOB_ID": "4711235"}).master_port == 21235
    assert detect_launch({**srun, "MASTER_ADDR": "head", "MASTER_PORT": "4000"}).master_addr == "head"
    assert detect_launch({}) is None
    assert detect_launch({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # plain sbatch job
    assert detect_launch({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) is None  # no address to meet at
    assert "each task trains alone" in caplog.text
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        detect_launch({"RANK": "0", "WORLD_SIZE": "2"})


# -- random draws of the loss --------------------------------------------------------------------
def _draws(x: torch.Tensor, generator: torch.Generator, rates: torch.Tensor) -> list[torch.Tensor]:
    """Every kind of draw a loss makes: group elements, Gaussian and Poisson noise, SURE probes."""
    from eqdeq_cli.groups import Reflections, Rotations, Shifts
    from eqdeq_cli.utils.draws import randn_like
    from eqdeq_cli.physics.noise import GaussianNoise, PoissonNoise

    out = []
    for group in (Shifts(), Shifts(max_shift=2), Rotations(), Rotations(exact=True), Reflections()):
        out.extend(group(x, generator=generator))
    out.append(GaussianNoise(sigma=0.1)(x, generator=generator))
    out.append(PoissonNoise(gain=0.05)(rates, generator=generator))
    out.append(randn_like(x, generator))
    out.append(torch.rand(3, generator=generator))  # not per sample: the same on every rank
    return out


def test_each_rank_draws_its_slice_of_the_single_process_draws():
    B, world = 6, 3
    x = torch.rand(B, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    rates = torch.rand(B, 1, 4, 5, generator=torch.Generator().manual_seed(2)) * 3
    g = torch.Generator().manual_seed(7)
    reference = _draws(x, g, rates)

    poisson_rates = rates / 0.05  # what PoissonNoise(gain=0.05) hands to torch.poisson

    def gather(rows):  # stands for the all-gather: the rates of all ranks, in rank order
        def everyone(local: torch.Tensor) -> torch.Tensor:
            assert torch.equal(local, poisson_rates[rows])
            return poisson_rates
        return everyone

    per_rank = []
    for r in range(world):
        rows = rank_slice(B, r, world)
        gr = torch.Generator().manual_seed(7)
        with GlobalBatchDraws(generator=gr, local_batch=B // world, global_batch=B, offset=rows.start,
                              gather=gather(rows)):
            per_rank.append(_draws(x[rows], gr, rates[rows]))
        assert torch.equal(gr.get_state(), g.get_state())  # every rank's generator stays in step
    for i, ref in enumerate(reference[:-1]):
        assert torch.equal(torch.cat([d[i] for d in per_rank]), ref), i
    assert all(torch.equal(d[-1], reference[-1]) for d in per_rank)


def test_draws_that_cannot_be_kept_in_step_are_refused():
    g = torch.Generator().manual_seed(0)
    with GlobalBatchDraws(generator=g, local_batch=2, global_batch=4, offset=0, gather=lambda t: t):
        with pytest.raises(RuntimeError, match="normal"):
            torch.normal(torch.zeros(2), torch.ones(2), generator=g)
        torch.normal(torch.zeros(2), torch.ones(2))  # other generators are not touched


# -- collectives over two real gloo processes ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, world: int, port: int, out: str) -> None:
    ctx = init_distributed(torch.device("cpu"), Launch(rank, world, rank, "127.0.0.1", port, "torchrun"),
                           timeout_s=120)
    weight = torch.nn.Parameter(torch.full((3,), float(rank + 5)))
    ctx.broadcast_parameters([weight])
    a, b = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(1))
    a.grad = torch.full((2, 2), float(rank + 1))
    ctx.average_gradients([a, b])
    result = {
        "weight": weight.detach().clone(), "grad": a.grad.clone(), "no_grad": b.grad is None,
        "sum": ctx.all_reduce_sum(torch.tensor([1.0, rank], dtype=torch.float64)),
        "any": ctx.any(rank == 1), "none": ctx.any(False),
        "gathered": ctx.all_gather_batch(torch.full((2, 1), float(rank))),
        "dir": ctx.broadcast_object(f"run-dir-of-{rank}"),
    }
    shutdown_distributed(ctx)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


def test_collectives_over_two_gloo_processes(tmp_path):
    context = mp.start_processes(_collectives, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=1):
        assert time.monotonic() < deadline, "the two processes did not finish"
    for rank in (0, 1):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(r["weight"], torch.full((3,), 5.0))  # rank 0's values everywhere
        assert torch.equal(r["grad"], torch.full((2, 2), 1.5)) and r["no_grad"]
        assert r["sum"].tolist() == [2.0, 1.0]
        assert r["any"] is True and r["none"] is False
        assert torch.equal(r["gathered"], torch.tensor([[0.0], [0.0], [1.0], [1.0]]))
        assert r["dir"] == "run-dir-of-0"


# -- two processes train like one -----------------------------------------------------------------
#: Plain fixed-point solves with a fixed iteration count and SGD: every step of two processes
#: equals one process's up to float summation order. (Anderson's float32 least squares and
#: Adam's division by √v amplify summation-order differences in near-zero gradients to ~1e-4.)
DDP_RUN = [*TINY, "data.n_train=8", "data.n_test=3", "trainer.batch_size=4", "trainer.max_steps=3",
           "trainer.eval_every=2", "trainer.device=cpu", "solver=fixed_point", "solver.forward.max_iter=3",
           "solver.forward.tol=0", "solver.backward.max_iter=3", "solver.backward.tol=0", "solver.eval.max_iter=3",
           "trainer.optimizer._target_=torch.optim.SGD", "trainer.optimizer.lr=0.05", "group=shifts",
           "evaluation.n_images=1"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["grad=implicit"], ["grad=jfb", "physics/noise=poisson"],
                                   ["grad=implicit", "regularizer=jacobian", "regularizer.weight=1"]])
def test_two_gloo_processes_give_the_weights_of_one(tmp_path, cache_dir, extra):
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "EQDEQ_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(k, None)
    train = [sys.executable, "-m", "eqdeq_cli.cli", "train", *DDP_RUN, *extra]
    single = subprocess.run([*train, f"hydra.run.dir={one}"], env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "eqdeq_cli.cli", "train", *DDP_RUN, *extra, f"hydra.run.dir={two}"]
    double = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]

    a = torch.load(one / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    for key, value in a["model"].items():
        err = float((value - b["model"][key]).norm()) / max(float(value.norm()), 1e-12)
        assert err < 1e-5, (key, err)
    assert torch.equal(a["rng"]["generators"]["loss"], b["rng"]["generators"]["loss"])
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert mb["n"] == ma["n"] == 3  # the test split was evaluated once, over both ranks
    for k in ("psnr", "ssim", "psnr_init", "iters_mean"):
        assert mb[k] == pytest.approx(ma[k], rel=1e-5), k
    rows = (two / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["2", "val"], ["3", "val"], ["3", "test"]]  # rank 0 alone
    log = (two / "train.log").read_text()
    assert log.count("test: psnr=") == 1 and "process 0 of 2 (torchrun, gloo backend" in log
