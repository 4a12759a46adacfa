r"""How much a map looks like a proximal operator: Jacobian symmetry and spectrum.

The proximal map of any (possibly non-convex, for its smooth part) function
``h``, ``prox_h(x) = argmin_z ½‖z − x‖² + h(z)``, is the gradient of a function
(its Moreau envelope gives ``prox_h = ∇(½‖·‖² − M_h)``), so its Jacobian is
**symmetric**; for convex ``h`` its eigenvalues lie in ``[0, 1]`` (firm
non-expansiveness). A learned denoiser ``D`` that acts as the prox of a prior should
therefore have ``J = ∂D/∂x`` with

* small asymmetry ``|⟨u, J v⟩ − ⟨v, J u⟩| / (‖u‖‖J v‖)`` for random ``u, v``, and
* eigenvalues of its symmetric part ``S = (J + Jᵀ)/2`` within about ``[0, 1]``.

All quantities are per sample (the Jacobian of a batched map is block diagonal).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ._linalg import Linearization, bdot, bnorm, bnormalize, bscale, randn_like

Fn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["jacobian_asymmetry", "jacobian_spectrum", "symmetric_extremes"]


def _stats(t: torch.Tensor) -> dict[str, Any]:
    t = t.double().cpu()
    return {"mean": float(t.mean()), "min": float(t.min()), "max": float(t.max()), "per_sample": t.tolist()}


def symmetric_extremes(op: Fn, v0: torch.Tensor, n_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Smallest and largest eigenvalue of a symmetric per-sample operator, by Lanczos.

    ``op`` maps ``(B, ...) → (B, ...)`` and acts on each sample as a symmetric matrix
    ``S_b``. ``n_iter`` Lanczos steps from ``v0`` (with full reorthogonalisation) build an
    orthonormal basis ``Q`` of the Krylov space and the tridiagonal ``QᵀSQ``, whose extreme
    eigenvalues (Ritz values) approach both ends of the spectrum of ``S`` at once, from
    inside. Unlike power iteration, this also converges when the two ends have nearly the
    same magnitude (eigenvalues ``±1``) (Golub & Van Loan, "Matrix Computations", §10.1).
    One product with ``op`` per step. Returns ``(λ_min, λ_max)``, each ``(B,)`` float64.
    """
    b = v0.shape[0]
    q, _ = bnormalize(v0)
    basis: list[torch.Tensor] = []
    alphas, betas = [], []
    alive = torch.ones(b, dtype=torch.bool, device=v0.device)
    size = torch.zeros(b, dtype=torch.long)
    scale = torch.full((b,), 1e-30, dtype=torch.float64, device=v0.device)  # largest |α| so far
    for _ in range(n_iter):
        basis.append(q)
        size += alive.cpu().long()
        w = op(q)
        a = bdot(q, w)
        for _pass in range(2):  # full reorthogonalisation, twice is enough
            for u in basis:
                w = w - bscale(u, bdot(u, w))
        q, beta = bnormalize(w)
        alphas.append(a.double())
        betas.append(beta.double())
        scale = torch.maximum(scale, a.double().abs())
        alive = alive & (beta.double() > 1e-10 * scale)
        if not bool(alive.any()):
            break
        q = bscale(q, alive.to(q.dtype))
    al = torch.stack(alphas, dim=1).cpu()
    be = torch.stack(betas, dim=1).cpu()
    lo, hi = torch.empty(b, dtype=torch.float64), torch.empty(b, dtype=torch.float64)
    for i in range(b):
        k = int(size[i])
        t = torch.diag(al[i, :k]) + torch.diag(be[i, :k - 1], 1) + torch.diag(be[i, :k - 1], -1)
        ev = torch.linalg.eigvalsh(t)
        lo[i], hi[i] = ev[0], ev[-1]
    return lo, hi


def jacobian_spectrum(fn: Fn, x: torch.Tensor, n_iter: int = 20, generator: torch.Generator | None = None,
                      lin: Linearization | None = None) -> dict[str, Any]:
    r"""Estimates of the spectrum of ``J = ∂fn/∂x`` at ``x``, per sample.

    * ``sym_max`` / ``sym_min``: the largest and smallest eigenvalue of the symmetric
      part ``S = (J + Jᵀ)/2``, both from one Lanczos run of ``n_iter`` steps
      (:func:`symmetric_extremes`), which also separates ends of equal magnitude
      (``±1``). For a symmetric ``J`` these are its own eigenvalues; for a prox of a
      convex function both lie in ``[0, 1]``.
    * ``spectral_radius``: ``ρ(J) = max |λ(J)|``, estimated from the growth rate of
      ``‖J^k v‖`` (geometric mean of ``‖J^{k+1} v‖ / ‖J^k v‖`` over the second half of
      the ``n_iter`` iterations), which converges also when the dominant eigenvalues
      are a complex pair.
    * ``spectral_norm``: ``‖J‖₂``, power iteration on ``JᵀJ`` (equals ``ρ(J)`` when
      ``J`` is symmetric).

    Power iteration approaches extreme eigenvalues from inside: the estimates are
    lower bounds in magnitude whose accuracy depends on the spectral gap; increase
    ``n_iter`` when successive calls disagree. Cost: about ``5 n_iter`` products with
    ``J`` or ``Jᵀ`` (each one backward pass). Returns dicts ``{"mean", "min", "max",
    "per_sample"}`` for each of the four quantities, plus ``"n_iter"``.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    lin = Linearization(fn, x) if lin is None else lin
    lam_min, lam_max = symmetric_extremes(lambda u: 0.5 * (lin.jvp(u) + lin.vjp(u)), randn_like(x, generator), n_iter)

    v, _ = bnormalize(randn_like(x, generator))
    logs = []
    for _ in range(n_iter):
        v, r = bnormalize(lin.jvp(v))
        logs.append(torch.log(r.clamp_min(1e-300)))
    radius = torch.stack(logs[n_iter // 2:]).mean(dim=0).exp()

    v, _ = bnormalize(randn_like(x, generator))
    for _ in range(n_iter):
        v, _ = bnormalize(lin.vjp(lin.jvp(v)))
    norm = bnorm(lin.jvp(v))
    return {
        "sym_max": _stats(lam_max),
        "sym_min": _stats(lam_min),
        "spectral_radius": _stats(radius),
        "spectral_norm": _stats(norm),
        "n_iter": n_iter,
    }


def jacobian_asymmetry(fn: Fn, x: torch.Tensor, n_probes: int = 8, generator: torch.Generator | None = None,
                       n_power_iter: int = 20, eps: float = 1e-12) -> dict[str, Any]:
    r"""Asymmetry of the Jacobian ``J = ∂fn/∂x`` at ``x`` over random Gaussian probes.

    For each probe pair ``(u, v)`` (i.i.d. standard normal, per sample):

    .. math:: a(u, v) = \frac{|\langle u, J v\rangle - \langle v, J u\rangle|}{\lVert u\rVert\,\lVert J v\rVert}
              = \frac{|\langle u, (J - J^\top) v\rangle|}{\lVert u\rVert\,\lVert J v\rVert},

    zero for every pair iff ``J`` is symmetric. Also reported, from the same probes, the
    relative Frobenius asymmetry ``‖J − Jᵀ‖_F / (2‖J‖_F)`` (in ``[0, 1]``; 1 for an
    antisymmetric ``J``), estimated as ``sqrt(Σ‖(J − Jᵀ)v‖² / Σ 4‖J v‖²)``
    (Hutchinson: ``E‖Mv‖² = ‖M‖_F²``).

    For a residual denoiser ``D(x) = x − R(x)`` the identity dominates ``‖J v‖``, so
    the ratio is small for any ``R``; ``fn = lambda x: x - D(x)`` has the same
    ``J − Jᵀ`` (up to sign) and normalises by the learned part instead.

    Args:
        fn: batched map ``(B, ...) -> (B, ...)`` with matching input and output shapes,
            differentiable twice by autograd (modules in eval mode).
        x: the point ``(B, ...)``.
        n_probes: number of probe pairs per sample.
        generator: CPU generator for the probes.
        n_power_iter: iterations of :func:`jacobian_spectrum` (0 skips the spectrum).

    Returns:
        ``{"mean", "std", "max"}`` of ``a`` over all probes and samples, ``"per_probe"``
        (batch means), ``"per_sample"`` (probe means), ``"frobenius"`` (per-sample
        stats dict), ``"n_probes"``, and ``"spectrum"`` (see :func:`jacobian_spectrum`)
        unless ``n_power_iter == 0``.
    """
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    if n_power_iter < 0:
        raise ValueError(f"n_power_iter must be >= 0, got {n_power_iter}")
    lin = Linearization(fn, x)
    if lin.out.shape != lin.x.shape:
        raise ValueError(f"fn must map inputs to outputs of the same shape to have a square Jacobian, "
                         f"got {tuple(x.shape)} -> {tuple(lin.out.shape)}")
    asym, anti2, jv2 = [], torch.zeros(x.shape[0], dtype=torch.float64), torch.zeros(x.shape[0], dtype=torch.float64)
    for _ in range(n_probes):
        u, v = randn_like(x, generator), randn_like(x, generator)
        ju, jv, jtv = lin.jvp(u), lin.jvp(v), lin.vjp(v)
        asym.append((bdot(u, jv) - bdot(v, ju)).abs() / (bnorm(u) * bnorm(jv)).clamp_min(eps))
        anti2 += bnorm(jv - jtv).double().cpu() ** 2
        jv2 += bnorm(jv).double().cpu() ** 2
    a = torch.stack(asym).double().cpu()  # (n_probes, B)
    out: dict[str, Any] = {
        "mean": float(a.mean()),
        "std": float(a.std()) if a.numel() > 1 else 0.0,
        "max": float(a.max()),
        "per_probe": a.mean(dim=1).tolist(),
        "per_sample": a.mean(dim=0).tolist(),
        "frobenius": _stats((anti2 / (4 * jv2).clamp_min(eps)).sqrt()),
        "n_probes": n_probes,
    }
    if n_power_iter > 0:
        out["spectrum"] = jacobian_spectrum(fn, x, n_iter=n_power_iter, generator=generator, lin=lin)
    return out
