r"""Data-parallel training over several processes (``torchrun`` or ``srun``).

**Launch detection** (:func:`detect_launch`): ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``srun`` without ``torchrun`` sets
``SLURM_PROCID``, ``SLURM_NTASKS`` and ``SLURM_LOCALID``, and the rendezvous address is
``MASTER_ADDR`` when set, else the first host of ``SLURM_JOB_NODELIST`` (port
``MASTER_PORT``, else :func:`job_port`). ``RANK`` wins over ``SLURM_PROCID`` (``srun torchrun``
gives both). A world of one process is not distributed.

**One step on W processes equals one step of one process on the global batch.**
With global batch ``B = trainer.batch_size`` and ``b = B / W`` (``B`` must be a
multiple of ``W``), rank ``r`` takes the slice ``[r b, (r+1) b)`` of the global batch
indices of the step (a pure function of seed and step), and:

* random draws of the loss (group elements, noise, SURE probes) are made for the global
  batch on every rank from the same generator, and each rank keeps its slice
  (:class:`GlobalBatchDraws`), so every rank's generator stays in step with the
  single-process one and the draws for sample ``i`` are the same;
* each rank's loss is the mean over its ``b`` samples; the gradients are averaged over
  ranks (:meth:`Distributed.average_gradients`), which gives the gradient of the mean
  over the ``B`` samples: :math:`\frac1W\sum_r \frac1b\sum_{i\in r}\nabla\ell_i
  = \frac1B\sum_i\nabla\ell_i`.

Why the gradients are averaged by hand instead of by ``DistributedDataParallel``'s
reducer: a training step calls the DEQ several times before one backward (EI calls it
on ``y`` and on ``A T_g x₁ + ε'``, SURE once more per probe), the implicit backward runs
extra ``autograd.grad`` calls inside the backward hook, and the model holds the
operator's (possibly sparse) matrices as buffers. DDP's reducer expects one forward per
backward and broadcasts buffers on every forward; it would need ``static_graph`` /
``find_unused_parameters`` and buffer exclusions to be correct, and any parameter that
misses a gradient would hang it. One all-reduce of the flattened gradients after
``backward()`` is correct for every loss and gradient mode, costs one collective per
step (the denoisers are small), and keeps the single-process code path unchanged.
Parameters are broadcast from rank 0 once at the start, so every rank starts from the
same weights whatever its RNG did.

Exactness: with solvers that run a fixed number of iterations (``tol=0``) the weights
after ``n`` steps on W processes equal those of one process up to float summation order.
With a tolerance, a solve stops when *all* samples of the batch it sees have converged,
so a rank's slice may stop earlier than the global batch would: statistically the
same training, not bit for bit.
"""
from __future__ import annotations

import datetime
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

#: The rendezvous port of a process outside a SLURM job, when ``MASTER_PORT`` is not set.
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a multi-process launch."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" or "srun"


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def job_port(env: Mapping[str, str]) -> int:
    """The rendezvous port of an ``srun`` launch without ``MASTER_PORT``: ``20000 +
    (SLURM_JOB_ID mod 10000)``, as ``scripts/slurm/multi_node.sbatch`` derives its own, so
    that two jobs whose first node is the same do not both listen on one port (they do only
    when their ids differ by a multiple of 10000); :data:`DEFAULT_PORT` without a job id.
    The range 20000-29999 lies below Linux's ephemeral ports (32768-60999)."""
    if not env.get("SLURM_JOB_ID"):
        return DEFAULT_PORT
    return 20000 + _int_env(env, "SLURM_JOB_ID") % 10000


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[03-05,9],cpu1`` → ``gpu03``.

    Handles the compressed forms SLURM writes (``name``, ``a,b``, ``prefix[1-3,7]``,
    zero-padded ranges); raises ``ValueError`` on an empty list.
    """
    text = nodelist.strip()
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", text)
    if not text or m is None:
        raise ValueError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}")
    prefix, bracket = m.group(1), m.group(3)
    if bracket is None:
        return prefix
    first = bracket.split(",")[0].split("-")[0]
    return prefix + first


def detect_launch(env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to, or ``None`` for a single process.

    ``torchrun`` (``RANK``/``WORLD_SIZE``) first, then ``srun`` (``SLURM_PROCID``/
    ``SLURM_NTASKS``) when ``MASTER_ADDR`` is set or ``SLURM_JOB_NODELIST`` names a host.
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int_env(env, "WORLD_SIZE")
        if world <= 1:
            return None
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise ValueError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} is not; launch with torchrun "
                             "or set MASTER_ADDR and MASTER_PORT")
        rank = _int_env(env, "RANK")
        local = _int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        return Launch(rank, world, local, env["MASTER_ADDR"], _int_env(env, "MASTER_PORT"), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = _int_env(env, "SLURM_NTASKS")
        if world <= 1:
            return None
        addr = env.get("MASTER_ADDR") or (first_slurm_host(env["SLURM_JOB_NODELIST"])
                                          if env.get("SLURM_JOB_NODELIST") else "")
        if not addr:
            log.warning("srun started %d tasks but neither MASTER_ADDR nor SLURM_JOB_NODELIST is set: "
                        "each task trains alone", world)
            return None
        port = _int_env(env, "MASTER_PORT") if env.get("MASTER_PORT") else job_port(env)
        rank = _int_env(env, "SLURM_PROCID")
        local = _int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        return Launch(rank, world, local, addr, port, "srun")
    return None


def rank_slice(global_batch: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s part ``[r b, (r+1) b)`` of a global batch, ``b = global_batch / world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
    if global_batch % world_size:
        raise ValueError(f"trainer.batch_size={global_batch} (the global batch) must be a multiple of the "
                         f"number of processes ({world_size}); use e.g. trainer.batch_size="
                         f"{world_size * max(1, -(-global_batch // world_size))}")
    b = global_batch // world_size
    return slice(rank * b, (rank + 1) * b)


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Contiguous shard of ``n`` items for ``rank``: sizes differ by at most one, rank 0 first."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))


class Distributed:
    """This process's place in the process group, and the few collectives training needs.

    ``Distributed()`` is the single-process context: every collective is the identity,
    so the training code has one path.
    """

    def __init__(self, *, rank: int = 0, world_size: int = 1, local_rank: int = 0,
                 device: torch.device | None = None) -> None:
        self.rank, self.world_size, self.local_rank = int(rank), int(world_size), int(local_rank)
        #: where collective tensors live (CUDA for NCCL, CPU for gloo)
        self.device = device or torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA device without an index, else ``device``."""
        if self.enabled and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return device

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"

    # -- collectives -------------------------------------------------------------------
    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` over ranks (a new tensor on ``values``' device)."""
        if not self.enabled:
            return values.clone()
        buf = values.detach().to(self.device).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(values.device)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        if not self.enabled:
            return bool(flag)
        return bool(self.all_reduce_sum(torch.tensor([float(bool(flag))], dtype=torch.float64)).item() > 0)

    def all_gather_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate the equally shaped ``(b, ...)`` tensors of all ranks along dim 0, in rank order."""
        if not self.enabled:
            return tensor
        local = tensor.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(tensor.device)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_parameters(self, params: Iterable[torch.Tensor]) -> None:
        """Copy rank 0's values of ``params`` into every rank's (in place)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for p in params:
                buf = p.detach().to(self.device).clone()
                dist.broadcast(buf, src=0)
                p.copy_(buf.to(p.device))

    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Replace each ``p.grad`` by its mean over ranks (one all-reduce of the flattened grads).

        Parameters without a gradient are left without one; every rank must have the same
        set (true when all ranks run the same loss and model).
        """
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.detach().reshape(-1).to(self.device, torch.float32 if g.dtype in (
            torch.float16, torch.bfloat16) else g.dtype) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g).to(g.device, g.dtype))
            offset += n


def init_distributed(device: torch.device, launch: Launch | None = None,
                     timeout_s: float = 1800.0) -> Distributed:
    """Join the process group of ``launch`` (default: :func:`detect_launch`).

    ``device`` is the configured training device: CUDA selects the NCCL backend and
    ``cuda:LOCAL_RANK`` as this rank's device (see :meth:`Distributed.place`), the CPU
    the gloo backend. Without a launch, the single-process context.
    """
    launch = detect_launch() if launch is None else launch
    if launch is None:
        return Distributed()
    ctx = Distributed(rank=launch.rank, world_size=launch.world_size, local_rank=launch.local_rank)
    if device.type == "cuda":
        ctx.device = ctx.place(device)
        torch.cuda.set_device(ctx.device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
                                rank=launch.rank, world_size=launch.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    log.info("process %d of %d (%s, %s backend, device %s)", launch.rank, launch.world_size, launch.launcher,
             backend, ctx.place(device))
    return ctx


def shutdown_distributed(ctx: Distributed, wait: bool = True) -> None:
    """Destroy the process group (no-op for a single process).

    ``wait``: first wait for every rank (a clean end: no rank exits while rank 0 is still
    writing). After an error, do not wait: the other ranks may never arrive.
    """
    if ctx.enabled and dist.is_initialized():
        try:
            if wait:
                dist.barrier()
        finally:
            dist.destroy_process_group()


_SIZED_DRAWS = ("rand", "randn", "randint")


class GlobalBatchDraws(TorchFunctionMode):
    """Inside this mode, draws from ``generator`` are made for the global batch and sliced.

    A call ``torch.rand/randn/randint(size, generator=generator)`` whose first dimension
    is the local batch ``b`` draws ``size`` with ``B`` in place of ``b`` and returns rows
    ``[offset, offset + b)``; ``torch.poisson(rate, generator=generator)`` gathers the
    rates of all ranks (``gather``), draws for all of them and keeps this rank's rows.
    Every rank thus consumes ``generator`` exactly as one process on the global batch
    would. Draws from other generators, or whose first dimension is not ``b``, are left
    alone; any other random function called with ``generator`` raises ``RuntimeError``,
    because it could not be kept in step.
    """

    def __init__(self, *, generator: torch.Generator, local_batch: int, global_batch: int, offset: int,
                 gather: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.generator, self.b, self.B, self.offset, self.gather = generator, local_batch, global_batch, offset, gather

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = dict(kwargs or {})
        if kwargs.get("generator") is not self.generator:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        rows = slice(self.offset, self.offset + self.b)
        if name in _SIZED_DRAWS:
            args, kwargs, sized = _with_batch(name, args, kwargs, self.b, self.B)
            out = func(*args, **kwargs)
            return out[rows] if sized else out
        if name == "poisson":
            rate = args[0]
            if rate.shape[:1] != (self.b,):
                return func(*args, **kwargs)
            everyone = self.gather(rate)
            return func(everyone, *args[1:], **kwargs)[rows]
        raise RuntimeError(f"torch.{name} with the loss generator cannot be kept in step across processes; "
                           f"draw with torch.rand / randn / randint / poisson")


def _with_batch(name: str, args: tuple, kwargs: dict, b: int, B: int) -> tuple[tuple, dict, bool]:
    """``args``/``kwargs`` of a sized draw with the leading size ``b`` replaced by ``B``."""
    def swap(size: Sequence[int]) -> tuple[tuple[int, ...], bool]:
        size = tuple(int(s) for s in size)
        if size and size[0] == b:
            return (B, *size[1:]), True
        return size, False

    if "size" in kwargs:
        kwargs["size"], sized = swap(kwargs["size"])
        return args, kwargs, sized
    for i, a in enumerate(args):
        if isinstance(a, (tuple, list, torch.Size)):
            size, sized = swap(a)
            return (*args[:i], size, *args[i + 1:]), kwargs, sized
    if name in ("rand", "randn") and args and all(isinstance(a, int) for a in args):
        size, sized = swap(args)
        return size, kwargs, sized
    return args, kwargs, False
