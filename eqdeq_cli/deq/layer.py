r"""The DEQ layer: ``x = T_θ(x; y)`` solved by a fixed-point solver.

How training differentiates it is a strategy object (:mod:`eqdeq_cli.deq.gradients`):
implicit differentiation, Jacobian-free backpropagation or unrolling.

A call is an ordinary differentiable function of ``y`` and ``θ`` whose backward is
local to it, so losses calling the layer several times (one call's output feeding the
next call's input, as in equivariant imaging) backpropagate with plain autograd.

In training mode the forward solve uses ``forward_solver``; in eval mode it uses
``eval_solver`` for the implicit and JFB modes (the model *is* the fixed point; the mode
only says how training differentiates it). An unrolled model is a network of
``unroll_steps`` iterations, trained and evaluated as such: its map is not trained to
have a useful fixed point, so solving it to convergence would evaluate another model.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Any

import torch
from torch import nn

from ..utils.checks import check_int
from .gradients import GRAD_MODES, DEQStats, GradientMode, Solver, gradient_mode, initial_point
from .maps import MapContext

log = logging.getLogger(__name__)

_STATS_KEPT = 64

__all__ = ["DEQ", "DEQStats", "FixedPointCache", "GRAD_MODES"]


class FixedPointCache:
    """The last fixed point of each training sample, keyed by the sample's measurements.

    Training measurements are fixed, so a sample seen again (next epoch) can start its
    forward solve from where its previous solve ended instead of from ``A†y``. A sample is
    recognised by the content of ``y`` (no index is needed): two fixed random projections
    of ``y_b`` form the key and the stored ``y_b`` is compared exactly before an entry is
    used. Inputs that never recur (the second call of an EI loss, whose measurements are
    re-simulated every step) only pass through: the oldest entries are dropped beyond
    ``capacity`` and an entry is renewed each time its sample is solved again. With the data
    order reshuffled every epoch, a sample can recur up to two epochs later, so an EI run (two
    solves per sample) keeps every training sample with a capacity of four times the number
    of training samples (with twice, about half of the first calls found their sample).

    Only the starting point changes: the solve still runs to the solver's tolerance, so the
    fixed point is the same up to that tolerance. The training checkpoints carry the cache
    (:meth:`state_dict`), so a resumed run starts its samples where an uninterrupted one does.

    Args:
        capacity: largest number of samples kept (≥ 1); each costs one ``y_b`` and one image.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = check_int("sample_cache", capacity, 1)
        self._entries: OrderedDict[tuple[float, float], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._weights: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def _keys(self, y: torch.Tensor) -> list[tuple[float, float]]:
        flat = y.detach().reshape(y.shape[0], -1).to(torch.float64)
        spec = (flat.shape[1], flat.device)
        if spec not in self._weights:
            gen = torch.Generator().manual_seed(0x5EED)
            self._weights[spec] = torch.rand((flat.shape[1], 2), generator=gen, dtype=torch.float64).to(flat.device)
        # one product per sample: a batched product may round a row differently with the batch
        # size, and a sample stored from one batch must be found from another (or from a checkpoint)
        weights = self._weights[spec]
        return [tuple((row @ weights).tolist()) for row in flat]

    def fill(self, y: torch.Tensor, z0: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``z0`` with each sample found in the cache replaced by its stored fixed point; and the
        number of samples replaced."""
        hits = []
        for b, key in enumerate(self._keys(y)):
            entry = self._entries.get(key)
            if entry is not None and entry[1].shape == z0.shape[1:] and entry[1].dtype == z0.dtype \
                    and entry[1].device == z0.device and torch.equal(entry[0], y[b].detach()):
                hits.append((b, entry[1]))
        if not hits:
            return z0, 0
        z0 = z0.clone()
        for b, z in hits:
            z0[b] = z
        return z0, len(hits)

    def state_dict(self) -> dict[str, Any]:
        """The entries, oldest first: ``{"y": [...], "z": [...]}`` (tensors on the CPU)."""
        pairs = list(self._entries.values())
        return {"y": [y.cpu() for y, _ in pairs], "z": [z.cpu() for _, z in pairs]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Replace the entries by those of :meth:`state_dict` (the newest ``capacity`` of them),
        on ``device``; the keys are recomputed from the stored measurements."""
        self.clear()
        ys, zs = list(state.get("y", [])), list(state.get("z", []))
        if len(ys) != len(zs):
            raise ValueError(f"a sample cache needs as many measurements as fixed points, got {len(ys)} and {len(zs)}")
        for y, z in zip(ys, zs):
            self.store(y.unsqueeze(0).to(device), z.unsqueeze(0).to(device))

    def store(self, y: torch.Tensor, z: torch.Tensor) -> None:
        """Keep ``z[b]`` as the fixed point of the sample measured by ``y[b]``."""
        for b, key in enumerate(self._keys(y)):
            self._entries[key] = (y[b].detach().clone(), z[b].detach().clone())
            self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


class DEQ(nn.Module):
    """Deep equilibrium reconstructor ``y ↦ x`` with ``x = T_θ(x; y)``.

    Args:
        fmap: a fixed-point map with ``prepare(y) -> ctx``, ``init(y)`` and ``fmap(z, ctx)``
            (see :mod:`eqdeq_cli.deq.maps`).
        grad: ``"implicit"``, ``"jfb"`` or ``"unrolled"``.
        forward_solver: ``solver(f, z0) -> (z, SolverStats)`` for training-mode solves,
            e.g. ``functools.partial(anderson_solve, max_iter=20, tol=1e-3)``.
        backward_solver: solver of ``v = Jᵀv + g`` (implicit mode); defaults to
            ``forward_solver``.
        eval_solver: solver in eval mode; defaults to ``forward_solver``.
        unroll_steps: tracked iterations of the unrolled mode (≥ 1).
        backward_accept: implicit mode: largest relative residual of the backward solve whose
            solution is used; other samples take the Jacobian-free gradient
            (:class:`~eqdeq_cli.deq.gradients.ImplicitGradient`).
        warm_start: start each solve from the previous call's solution when the batch
            shape, dtype and device match. Caveat: this only helps when consecutive calls
            see related inputs (the same batch again, or the second call of an EI loss,
            whose input derives from the first call's output); the result then depends on
            the order of calls and, with loose tolerances, is not reproducible call by call.
        sample_cache: training solves start each sample from its own previous fixed point,
            kept for up to this many samples (0: off; see :class:`FixedPointCache`). Used in
            training mode only, by the implicit and JFB modes.
        closed_form_vjp: implicit mode: apply the transpose of the map's data step in closed
            form in the backward solve where the map has one (same gradient, less autograd;
            see :class:`~eqdeq_cli.deq.gradients.ImplicitGradient`).

    Attributes:
        last_stats: :class:`DEQStats` of the most recent call (``None`` before any call).
        keep_equilibria: when true, every training-mode call that solves for a fixed point
            keeps ``(z*, ctx)`` for :meth:`pop_equilibria` (a regulariser of the equilibrium
            reads them; see :mod:`eqdeq_cli.deq.regularizers`). Off by default.

    Shapes: ``y`` as the physics measures it; the output ``(B, C, H, W)``.
    """

    def __init__(self, fmap: nn.Module, *, grad: str = "implicit", forward_solver: Solver,
                 backward_solver: Solver | None = None, eval_solver: Solver | None = None,
                 unroll_steps: int = 10, warm_start: bool = False,
                 backward_accept: float = float("inf"), closed_form_vjp: bool = True,
                 sample_cache: int = 0) -> None:
        super().__init__()
        for name, s in (("forward_solver", forward_solver), ("backward_solver", backward_solver),
                        ("eval_solver", eval_solver)):
            if s is not None and not callable(s):
                raise TypeError(f"{name} must be callable solver(f, z0) -> (z, stats), got {type(s).__name__}")
        check_int("unroll_steps", unroll_steps, 1)
        if not isinstance(warm_start, bool):
            raise ValueError(f"warm_start must be true or false, got {warm_start!r}")
        self.fmap = fmap
        self.forward_solver = forward_solver
        self.backward_solver = backward_solver if backward_solver is not None else forward_solver
        self.gradient: GradientMode = gradient_mode(grad, backward_solver=self.backward_solver,
                                                    unroll_steps=unroll_steps, backward_accept=backward_accept,
                                                    closed_form_vjp=closed_form_vjp)
        self.eval_solver = eval_solver if eval_solver is not None else forward_solver
        self.unroll_steps = unroll_steps
        self.warm_start = warm_start
        self.last_stats: DEQStats | None = None
        self._recent: deque[DEQStats] = deque(maxlen=_STATS_KEPT)
        self._previous: torch.Tensor | None = None
        self.keep_equilibria = False
        self._equilibria: list[tuple[torch.Tensor, MapContext]] = []
        check_int("sample_cache", sample_cache, 0)
        self.sample_cache = FixedPointCache(sample_cache) if sample_cache else None

    @property
    def grad(self) -> str:
        """The gradient mode's name: ``implicit``, ``jfb`` or ``unrolled``."""
        return self.gradient.name

    def extra_repr(self) -> str:
        cache = self.sample_cache.capacity if self.sample_cache is not None else 0
        return f"{self.gradient.extra_repr()}, warm_start={self.warm_start}, sample_cache={cache}"

    def pop_stats(self) -> list[DEQStats]:
        """Stats of every call since the last pop (at most 64, oldest first), then forget them."""
        out = list(self._recent)
        self._recent.clear()
        return out

    def pop_equilibria(self) -> list[tuple[torch.Tensor, MapContext]]:
        """The ``(z*, ctx)`` of every training-mode solve since the last pop (``z*`` of shape
        ``(B, C, H, W)``; both detached, so a penalty at the equilibrium reaches only the map's
        parameters), kept while :attr:`keep_equilibria` is true; then forget them."""
        out = self._equilibria
        self._equilibria = []
        return out

    def reset_warm_start(self) -> None:
        """Forget the stored solution used by ``warm_start`` (done on every switch between
        training and evaluation, so neither starts from the other's solutions)."""
        self._previous = None

    def train(self, mode: bool = True) -> "DEQ":
        if mode != self.training:
            self.reset_warm_start()
        return super().train(mode)

    def _start(self, y: torch.Tensor, start: torch.Tensor | None = None,
               ctx: MapContext | None = None) -> tuple[torch.Tensor, int]:
        """The starting point of a solve, and how many samples came from the sample cache.
        A given ``start`` wins over ``warm_start`` and the sample cache. A half-precision
        start (an operator run under autocast) is promoted to float32, the precision the
        solver iterates in."""
        z0 = initial_point(self, y, ctx).detach()
        if start is not None:
            if start.shape != z0.shape:
                raise ValueError(f"start must have the reconstruction's shape {tuple(z0.shape)}, "
                                 f"got {tuple(start.shape)}")
            z0 = start.detach().to(torch.promote_types(start.dtype, z0.dtype))
        if z0.dtype in (torch.float16, torch.bfloat16):
            z0 = z0.float()
        if start is not None:
            return z0, 0
        prev = self._previous
        if self.warm_start and prev is not None and prev.shape == z0.shape \
                and prev.dtype == z0.dtype and prev.device == z0.device:
            z0 = prev
        if self.sample_cache is not None and self.training:
            return self.sample_cache.fill(y, z0)
        return z0, 0

    def record(self, stats: DEQStats) -> None:
        """Keep ``stats`` as :attr:`last_stats` and for :meth:`pop_stats`; warn on a non-finite solve."""
        self.last_stats = stats
        self._recent.append(stats)
        fw = stats.forward
        if fw.nonfinite:
            log.warning("DEQ forward solve met a non-finite residual (or diverged) after %d iterations", fw.iterations)

    def solve(self, y: torch.Tensor, ctx: MapContext, *, record: bool = True,
              start: torch.Tensor | None = None) -> tuple[torch.Tensor, DEQStats]:
        """The fixed point ``z*`` of ``z ↦ T(z; y)`` without autograd, and the call's stats.
        Training mode uses ``forward_solver``, eval mode ``eval_solver``. ``record``: keep the
        stats (:meth:`record`) and the solution for ``warm_start``, as a call of the layer does;
        ``False`` leaves the layer's state as it was (a measurement beside training).
        ``start``: the solve's starting point, ``(B, C, H, W)`` (default: ``A†y``, or the
        ``warm_start`` / sample-cache start).

        Raises:
            ValueError: ``start`` of another shape than the reconstruction."""
        solver = self.forward_solver if self.training else self.eval_solver
        with torch.no_grad():
            z0, hits = self._start(y, start, ctx)
            z_star, fstats = solver(lambda z: self.fmap(z, ctx), z0.detach())
        stats = DEQStats(forward=fstats, mode=self.grad, cache_hits=hits)
        if record:
            self.record(stats)
            if self.keep_equilibria and self.training:
                self._equilibria.append((z_star.detach(), ctx.detached()))
            if self.warm_start:
                self._previous = z_star.detach()
            if self.sample_cache is not None and self.training and not fstats.nonfinite:
                self.sample_cache.store(y, z_star)
        return z_star, stats

    def forward(self, y: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction ``(B, C, H, W)`` of measurements ``y``. ``start``: where the
        fixed-point solve begins (detached). Where the solve converges it changes how many
        iterations it takes, not the fixed point or its gradient; a solve stopped at its
        iteration cap ends elsewhere. Ignored by the unrolled mode, whose reconstruction is
        defined by its steps from ``A†y``."""
        ctx: MapContext = self.fmap.prepare(y)
        return self.gradient.reconstruct(self, y, ctx, start=start)
