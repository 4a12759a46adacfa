r"""Can a symmetry group teach an EI loss anything about the nullspace of ``A``?

Equivariant imaging learns the part of an image that ``A`` does not see from the
measurements of *transformed* images: if ``x`` is a plausible image, so is ``T_g x``,
and ``A T_g x`` reveals what ``A x`` hid. That fails when ``A`` is equivariant to the
group, ``A T_g = T̃_g A`` for some ``T̃_g`` acting on measurements: then ``T_g`` maps the
nullspace ``N(A)`` onto itself and a nullspace component stays invisible after any
transformation (Chen, Tachella, Davies 2021). MRI with a Cartesian mask and circular
shifts is the standard case: a shift only multiplies k-space by a phase, which the mask
does not notice.

The check. Draw random smooth-ish images ``w``, split off their nullspace component
``v = P_N w``, transform it and measure how visible it becomes:

.. math:: ρ_g = \frac{\lVert A T_g v\rVert}{\bar σ \, \lVert T_g v\rVert}, \qquad
          \bar σ^2 = \operatorname{E}_u \frac{\lVert A u\rVert^2}{\lVert u\rVert^2}
          = \frac{\operatorname{tr}(A^\top A)}{n}\ (u \text{ white noise}).

``ρ_g ≈ 1`` means a transformed nullspace image is measured as well as a generic image;
``ρ_g ≈ 0`` means it stays invisible. The normalisation by the mean singular-value
energy ``σ̄`` (rather than by ``‖A‖`` or by ``‖A T_g w‖``) keeps ``ρ`` of order one for
useful groups even for ill-conditioned operators such as sparse-view CT, whose largest
singular values belong to smooth images that dominate ``‖A w‖`` but say nothing about
``N(A)``. At the identity, ``ρ`` measures how well ``v`` was projected (its *leakage*).

Which projection. ``v = w − A_dagger(A w)`` is in ``N(A)`` exactly when
``A A_dagger A = A`` — true for the zero-filled inverse FFT of Cartesian MRI and for the
masking of inpainting (both are the Moore–Penrose pseudo-inverse of a partial isometry),
false for filtered back-projection: FBP is a discretised, few-view approximation of the
inverse, so ``w − FBP(A w)`` keeps a large range component, and ``ρ_g`` would look large
for *every* group, a false "identifiable". Hence ``A_dagger`` is used only when it passes
that test on the samples (``‖A v‖ ≤ projection_tol ‖A w‖``); otherwise the least-squares
pseudo-inverse is used: conjugate gradients on ``AᵀA x = Aᵀ A w`` from ``x₀ = 0`` stay in
``range(Aᵀ)`` and converge to the minimum-norm solution ``P_{range(Aᵀ)} w``, so
``v = w − x_k`` is the orthogonal nullspace component up to directions whose singular
values CG has not resolved in ``cg_iter`` steps (numerically unobserved, which is what
matters here); the leakage reports how far from ``N(A)`` the result is.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from eqdeq_cli.groups.base import Group
from eqdeq_cli.linalg import conjugate_gradient
from eqdeq_cli.physics.base import LinearPhysics

from ._linalg import bnorm, randn_like

log = logging.getLogger(__name__)

__all__ = ["nullspace_component", "identifiability", "identifiability_warning"]

#: ``‖v‖ / ‖w‖`` below this: the images have (numerically) no nullspace component.
_TRIVIAL_NULLSPACE = 1e-4


def _smooth_images(shape: tuple[int, ...], generator: torch.Generator | None, sigma: float,
                   dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """White noise blurred by a Gaussian of ``sigma`` pixels (circular), unit RMS per sample."""
    w = torch.randn(shape, generator=generator, dtype=torch.float64)
    if sigma > 0:
        r = max(1, int(3 * sigma + 0.5))
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        b, c, h, wd = shape
        z = w.reshape(b * c, 1, h, wd)
        z = F.conv2d(F.pad(z, (r, r, 0, 0), mode="circular"), k.view(1, 1, 1, -1))
        z = F.conv2d(F.pad(z, (0, 0, r, r), mode="circular"), k.view(1, 1, -1, 1))
        w = z.reshape(shape)
    w = w / w.reshape(shape[0], -1).pow(2).mean(dim=1).sqrt().view(-1, 1, 1, 1)
    return w.to(device=device, dtype=dtype)


def nullspace_component(physics: LinearPhysics, w: torch.Tensor, cg_iter: int = 200, cg_tol: float = 1e-10,
                        projection_tol: float = 1e-6) -> tuple[torch.Tensor, str, torch.Tensor]:
    """Nullspace component ``v`` of images ``w`` ``(B, C, H, W)`` (see the module notes).

    Returns ``(v, method, leakage)`` with ``method`` ``"A_dagger"`` or
    ``"least_squares"`` and ``leakage = ‖A v‖ / ‖A w‖`` per sample ``(B,)``.
    """
    aw = physics.A(w)
    aw_norm = bnorm(aw).clamp_min(1e-30)
    v = w - physics.A_dagger(aw)
    leakage = bnorm(physics.A(v)) / aw_norm
    if bool((leakage <= projection_tol).all()):
        return v, "A_dagger", leakage
    x_ls = conjugate_gradient(physics.AtA, physics.A_adjoint(aw), x0=torch.zeros_like(w), n_iter=cg_iter, tol=cg_tol)
    v = w - x_ls
    return v, "least_squares", bnorm(physics.A(v)) / aw_norm


@torch.no_grad()
def identifiability(physics: LinearPhysics, group: Group, n_samples: int = 8,
                    generator: torch.Generator | None = None, n_elements: int = 4, threshold: float = 0.05,
                    smoothness: float = 1.0, cg_iter: int = 200, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    r"""Visibility ``ρ_g`` of transformed nullspace images (see the module notes).

    Args:
        physics: the operator (its noise is not used).
        group: the candidate group; ``n_elements`` draws of one element per image.
        n_samples: number of random images ``w`` (Gaussian-blurred white noise,
            ``smoothness`` pixels).
        generator: CPU generator for the images and the group elements.
        threshold: ``identifiable`` is ``mean ρ ≥ threshold``. Groups ``A`` is
            equivariant to give ``ρ`` at rounding level (or at the leakage); groups that
            work give ``ρ`` of order 0.1–1.
        cg_iter: conjugate-gradient steps when ``A_dagger`` is not an exact pseudo-inverse.
        dtype: working precision (float64 keeps the projection exact to ~1e-12).

    Returns:
        ``rho_mean``, ``rho_min``, ``rho_max``, ``rho_per_element`` (batch means),
        ``leakage`` (``ρ`` at the identity: the accuracy floor), ``nullspace_fraction``
        (mean ``‖v‖/‖w‖``; 0 when ``A`` is injective on these images), ``method``
        (``"A_dagger"`` or ``"least_squares"``), ``reference_gain`` (``σ̄``),
        ``threshold``, ``identifiable`` (bool), ``reliable`` (leakage below half the
        threshold), ``trivial_nullspace`` (bool), ``group``, ``physics``.
    """
    if n_samples < 1 or n_elements < 1:
        raise ValueError(f"n_samples and n_elements must be >= 1, got {n_samples} and {n_elements}")
    device = next((t.device for t in list(physics.buffers()) + list(physics.parameters())), torch.device("cpu"))
    shape = (n_samples,) + tuple(physics.img_shape)
    w = _smooth_images(shape, generator, smoothness, dtype, device)
    u = randn_like(w, generator)
    ref_gain = float((bnorm(physics.A(u)) / bnorm(u)).pow(2).mean().sqrt())
    if ref_gain <= 0:
        raise ValueError(f"{type(physics).__name__}.A maps random images to zero: nothing is measured")
    v, method, _ = nullspace_component(physics, w, cg_iter=cg_iter)
    v_norm = bnorm(v)
    fraction = float((v_norm / bnorm(w)).mean())
    leakage = float((bnorm(physics.A(v)) / (ref_gain * v_norm.clamp_min(1e-30))).mean())
    rho = []
    for _ in range(n_elements):
        g = group.sample(n_samples, generator=generator, device=device)
        tv = group.apply(v, g)
        rho.append(bnorm(physics.A(tv)) / (ref_gain * bnorm(tv).clamp_min(1e-30)))
    r = torch.stack(rho).double().cpu()
    trivial = fraction < _TRIVIAL_NULLSPACE
    report = {
        "rho_mean": float(r.mean()), "rho_min": float(r.min()), "rho_max": float(r.max()),
        "rho_per_element": r.mean(dim=1).tolist(),
        "leakage": leakage, "nullspace_fraction": fraction, "method": method,
        "reference_gain": ref_gain, "threshold": threshold,
        "identifiable": bool(trivial or float(r.mean()) >= threshold),
        "reliable": bool(trivial or leakage < threshold / 2),
        "trivial_nullspace": bool(trivial),
        "group": type(group).__name__, "physics": type(physics).__name__,
    }
    if not report["reliable"]:
        # Not a user's warning: no setting of a run controls cg_iter; the report says "reliable": false.
        log.debug("identifiability check for %s × %s: the nullspace estimate leaks (ρ at the identity %.3g ≥ "
                  "threshold/2 = %.3g) after %d conjugate-gradient steps", report["physics"], report["group"],
                  leakage, threshold / 2, cg_iter)
    return report


def _default_alternatives(group: Group) -> dict[str, Group]:
    """The built-in groups as configured by ``configs/group/`` (and continuous rotations),
    named by the command-line choice that selects them, less the one ``group`` is."""
    from eqdeq_cli.groups import Reflections, Rotations, Scalings, Shifts

    options: dict[str, Group] = {"group=rotations": Rotations(exact=True),
                                 "group=rotations group.exact=false": Rotations(exact=False),
                                 "group=reflections": Reflections(), "group=shifts": Shifts(),
                                 "group=scalings": Scalings()}
    return {name: cand for name, cand in options.items() if not _same_kind(cand, group)}


def _same_kind(a: Group, b: Group) -> bool:
    return type(a) is type(b) and getattr(a, "exact", None) == getattr(b, "exact", None)


def identifiability_warning(physics: LinearPhysics, group: Group, n_samples: int = 8,
                            generator: torch.Generator | None = None, threshold: float = 0.05,
                            alternatives: Mapping[str, Group] | None = None,
                            report: Mapping[str, Any] | None = None, cg_iter: int = 200,
                            dtype: torch.dtype = torch.float64) -> str | None:
    """A message explaining why ``group`` cannot work with ``physics``, or None if it can.

    Runs :func:`identifiability` (or uses ``report``) and, when transformed nullspace
    images stay invisible, evaluates ``alternatives`` (name → group; default: the
    built-in groups as ``configs/group/`` sets them up, and continuous rotations, each named
    by its command-line choice such as ``group=rotations group.exact=false``) to name those
    that would work.
    ``cg_iter`` and ``dtype`` are passed to :func:`identifiability`.
    """
    if report is None:
        report = identifiability(physics, group, n_samples=n_samples, generator=generator, threshold=threshold,
                                 cg_iter=cg_iter, dtype=dtype)
    if report["identifiable"]:
        return None
    cands = _default_alternatives(group) if alternatives is None else dict(alternatives)
    working = []
    for name, cand in cands.items():
        r = identifiability(physics, cand, n_samples=n_samples, generator=generator, threshold=threshold,
                            cg_iter=cg_iter, dtype=dtype)
        if r["identifiable"]:
            working.append(f"{name} (ρ = {r['rho_mean']:.2f})")
    if working:
        advice = "Use a group A is not equivariant to: " + "; ".join(working) + "."
    else:
        advice = ("Use a group A is not equivariant to (for a Cartesian MRI mask: rotations or reflections "
                  "rather than shifts).")
    p, g = report["physics"], report["group"]
    return (f"The group {g} cannot teach an equivariant-imaging loss anything about the nullspace of {p}: "
            f"transformed nullspace images stay invisible to A (mean ‖A T_g v‖ / (σ̄‖T_g v‖) = "
            f"{report['rho_mean']:.2e} < {report['threshold']}). This means A is equivariant to {g} "
            f"(A T_g = T̃_g A, so every T_g maps the nullspace to itself), and the EI loss then adds "
            f"nothing beyond measurement consistency. {advice}")
