r"""The analysis of one trained DEQ on a few images: what ``eqdeq analyze`` computes.

For measurements ``y`` (``B`` test samples) and the DEQ's fixed points ``z* = T(z*; y)``:

* **Equivariance** (:func:`~eqdeq_cli.analysis.equivariance_error`) of the denoiser
  ``D`` at its operating points ``u*`` (the input ``D`` receives at ``z*``; for the
  proximal-gradient map ``u* = z* − γAᵀ(Az* − y)``) and of the whole reconstructor
  ``x ↦ f(A x)`` on the ground-truth images (the reconstructions when the data have no
  images), over ``n_elements`` draws of the run's group, restricted to the inscribed disc
  for continuous rotations.
* **Prox-likeness** of ``D`` at ``u*``: Jacobian asymmetry of ``D`` and of its learned part
  ``u ↦ u − D(u)`` (the identity of a residual denoiser hides the asymmetry of ``D``) —
  the summary holds the relative Frobenius asymmetry ``‖J − Jᵀ‖_F / (2‖J‖_F)`` (0 for a
  symmetric ``J``, ``1/√2`` for a permutation; independent of the image size, unlike the
  probe-pair ratio, which shrinks like ``1/√n``), and
  the eigenvalue range of the symmetric part of ``∂D/∂u`` (``[0, 1]`` for the prox of a
  convex function).
* **Contraction**: ``‖∂T/∂z‖₂`` at ``z*`` per sample (power iteration), and the rate
  the eval solver achieved, ``(r_K/r_0)^{1/K}`` from its residual history.
* **Identifiability** of the operator under the group (``ρ`` of
  :func:`~eqdeq_cli.analysis.identifiability`).
* **Error split** (when the images are known; :func:`~eqdeq_cli.analysis.error_split`):
  the error of the reconstructions and of ``A†y`` in the range of ``Aᵀ`` and in the
  nullspace of ``A``, relative to ``‖x‖`` — how much of what ``A`` cannot see was learned.

:func:`analyze_deq` returns a JSON-ready dict whose ``"summary"`` holds the scalars the
sweep collector tabulates; :func:`plot_analysis` draws it.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..utils.checks import check_int
from .contraction import convergence_rate, spectral_norm_per_sample
from .equivariance import equivariance_error, measure_then_reconstruct
from .error_split import error_split
from .identifiability import identifiability
from .jacobian import jacobian_asymmetry

log = logging.getLogger(__name__)

__all__ = ["AnalysisSettings", "analysis_stages", "analyze_deq", "denoiser_input", "plot_analysis", "SUMMARY_KEYS"]

#: Scalars of ``analysis.json["summary"]`` (the collector reads them as ``an_<key>``).
SUMMARY_KEYS: tuple[str, ...] = (
    "equiv_denoiser", "equiv_reconstructor", "jac_asym_denoiser", "jac_asym_learned",
    "eig_min", "eig_max", "lipschitz_max", "lipschitz_mean", "conv_rate", "solver_iters", "ident_rho",
    "err_range", "err_nullspace", "err_range_init", "err_nullspace_init",
)


@dataclass(frozen=True)
class AnalysisSettings:
    """How much work the analysis does (the ``analysis`` node of ``configs/analyze.yaml``).

    Args:
        n_images: test samples analysed (the first ones of the split).
        n_elements: group draws for the equivariance errors (one element per sample each).
        n_probes: random probe pairs for the Jacobian asymmetry.
        power_iter: power iterations for the eigenvalue range and the Lipschitz estimate.
        identifiability_samples: random images for the identifiability check (0: skip it).
        seed: seed of the CPU generator of group elements, probes and start vectors.
    """

    n_images: int = 4
    n_elements: int = 8
    n_probes: int = 4
    power_iter: int = 20
    identifiability_samples: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_images", "n_elements", "n_probes", "power_iter"):
            check_int(f"analysis.{name}", getattr(self, name), 1)
        check_int("analysis.identifiability_samples (0 skips the check)", self.identifiability_samples, 0)


def analysis_stages(settings: AnalysisSettings) -> tuple[str, ...]:
    """The stages :func:`analyze_deq` reports to ``on_stage``, in order (a progress bar's steps)."""
    stages = ("solve", "equivariance", "jacobian", "contraction")
    return stages + (("identifiability",) if settings.identifiability_samples > 0 else ())


def denoiser_input(fmap: torch.nn.Module, z: torch.Tensor, ctx: Any) -> torch.Tensor:
    """The input the map's denoiser receives in ``fmap(z, ctx)`` (captured by a hook, so
    it works for any map: ``z − γAᵀ(Az − y)`` for prox-gradient, ``prox_γf(z)`` for HQS,
    each mixed with ``A†y`` when the map is anchored)."""
    seen: list[torch.Tensor] = []
    handle = fmap.denoiser.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            fmap(z, ctx)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"{type(fmap).__name__} did not call its denoiser")
    return seen[0]


def _brief(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: stats[k] for k in ("mean", "min", "max") if k in stats}


def analyze_deq(deq: torch.nn.Module, group: Any, y: torch.Tensor, x: torch.Tensor | None = None, *,
                settings: AnalysisSettings = AnalysisSettings(),
                on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Analyse ``deq`` (a :class:`~eqdeq_cli.deq.DEQ`) on measurements ``y`` (``B`` samples).

    ``x``: the ground-truth images ``(B, C, H, W)`` if known (used for the reconstructor's
    equivariance; otherwise the reconstructions are used). The DEQ is put in eval mode
    (its eval solver) and restored afterwards. Returns the dict written as
    ``analysis.json`` (see the module notes), with ``"summary"`` holding :data:`SUMMARY_KEYS`.
    ``on_stage(name)`` is called as each of :func:`analysis_stages` ends (e.g. to advance a
    progress bar).
    """
    done = on_stage if on_stage is not None else (lambda _stage: None)
    fmap, physics = deq.fmap, deq.fmap.physics
    denoiser = fmap.denoiser
    gen = torch.Generator(device="cpu").manual_seed(int(settings.seed))
    was_training = deq.training
    deq.eval()
    try:
        with torch.no_grad():
            z_star = deq(y)
            stats = deq.last_stats.forward
            ctx = fmap.prepare(y)
        errors = None
        if x is not None:
            errors = error_split(physics, {"reconstruction": z_star, "A_dagger": physics.A_dagger(y)}, x)
        done("solve")
        u_star = denoiser_input(fmap, z_star, ctx)
        h, w = z_star.shape[-2:]
        mask = group.field_of_view(h, w, device=z_star.device, dtype=z_star.dtype)
        images = x if x is not None else z_star
        eq_d = equivariance_error(denoiser, group, u_star, settings.n_elements, gen, mask)
        eq_r = equivariance_error(measure_then_reconstruct(deq, physics), group, images, settings.n_elements,
                                  gen, mask)
        done("equivariance")
        jac_d = jacobian_asymmetry(denoiser, u_star, settings.n_probes, gen, n_power_iter=settings.power_iter)
        jac_l = jacobian_asymmetry(lambda u: u - denoiser(u), u_star, settings.n_probes, gen, n_power_iter=0)
        done("jacobian")
        lip = spectral_norm_per_sample(lambda z: fmap(z, ctx), z_star, n_iter=settings.power_iter, generator=gen)
        done("contraction")
        ident = None
        if settings.identifiability_samples > 0:
            ident = identifiability(physics, group, n_samples=settings.identifiability_samples, generator=gen,
                                    cg_iter=200, dtype=torch.float32)
            done("identifiability")
    finally:
        deq.train(was_training)
    spectrum = jac_d["spectrum"]
    history = [float(r) for r in stats.history]
    lip_t = lip.double().cpu()
    summary = {
        "equiv_denoiser": eq_d["mean"],
        "equiv_reconstructor": eq_r["mean"],
        "jac_asym_denoiser": jac_d["frobenius"]["mean"],
        "jac_asym_learned": jac_l["frobenius"]["mean"],
        "eig_min": spectrum["sym_min"]["min"],
        "eig_max": spectrum["sym_max"]["max"],
        "lipschitz_max": float(lip_t.max()),
        "lipschitz_mean": float(lip_t.mean()),
        "conv_rate": convergence_rate(history),
        "solver_iters": float(stats.iterations),
        "ident_rho": ident["rho_mean"] if ident is not None else math.nan,
    }
    for suffix, key in (("", "reconstruction"), ("_init", "A_dagger")):
        for part in ("range", "nullspace"):
            summary[f"err_{part}{suffix}"] = errors[key][f"{part}_mean"] if errors is not None else math.nan
    return {
        "summary": summary,
        "n_images": int(y.shape[0]),
        "group": repr(group),
        "physics": type(physics).__name__,
        "settings": asdict(settings),
        "equivariance": {"mask": "disc" if mask is not None else None,
                         "denoiser": eq_d, "reconstructor": eq_r,
                         "reconstructor_images": "ground truth" if x is not None else "reconstructions"},
        "jacobian": {"denoiser": {**{k: v for k, v in jac_d.items() if k != "spectrum"},
                                  "frobenius": _brief(jac_d["frobenius"])},
                     "learned_part": {**jac_l, "frobenius": _brief(jac_l["frobenius"])},
                     "spectrum": {k: (_brief(v) if isinstance(v, dict) else v) for k, v in spectrum.items()}},
        "contraction": {"lipschitz_per_sample": lip_t.tolist(), "solver_iterations": int(stats.iterations),
                        "solver_residual": stats.residual.detach().double().cpu().tolist(),
                        "solver_converged": stats.converged.detach().cpu().tolist(),
                        "residual_history": history, "convergence_rate": summary["conv_rate"]},
        "identifiability": ident,
        "error_split": errors,
    }


def _element_axis(elements: list[Any]) -> tuple[list[float] | None, str]:
    """Scalar group elements (rotation angles, exact quarter turns) as x coordinates."""
    flat = [g for draw in elements for g in draw]
    if flat and all(isinstance(g, (int, float)) and not isinstance(g, bool) for g in flat):
        return [float(g) for g in flat], "group element g"
    return None, "draw"


def plot_analysis(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG of a report: equivariance error per group element (denoiser and reconstructor)
    and the eval solver's residual history with the contraction rate it implies."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(10, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax_eq, ax_res = fig.subplots(1, 2)
    for name, marker in (("denoiser", "o"), ("reconstructor", "s")):
        eq = report["equivariance"][name]
        xs, label = _element_axis(eq["elements"])
        errs = [e for draw in eq["per_pair"] for e in draw]
        if xs is None:
            xs = [float(i) for i, draw in enumerate(eq["per_pair"]) for _ in draw]
        ax_eq.scatter(xs, errs, marker=marker, s=18, alpha=0.7, label=f"{name} (mean {eq['mean']:.3g})")
        ax_eq.set_xlabel(label)
    ax_eq.set_ylabel("‖f(T_g x) − T_g f(x)‖ / ‖T_g f(x)‖")
    ax_eq.set_title(f"equivariance error, {report['group']}", fontsize=9)
    ax_eq.legend(fontsize=8)
    con = report["contraction"]
    hist = [r for r in con["residual_history"] if r > 0 and math.isfinite(r)]
    if hist:
        ax_res.semilogy(range(len(hist)), hist, marker=".", label="max relative residual")
        rate = con["convergence_rate"]
        lip = report["summary"]["lipschitz_max"]
        if math.isfinite(lip) and lip > 0:
            ax_res.semilogy(range(len(hist)), [hist[0] * lip ** k for k in range(len(hist))], "--",
                            label=f"‖J‖ = {lip:.3g} per iteration")
        ax_res.set_title(f"eval solve: rate {rate:.3g} per iteration", fontsize=9)
        ax_res.legend(fontsize=8)
    ax_res.set_xlabel("iteration")
    ax_res.set_ylabel("‖T(z) − z‖ / ‖T(z)‖")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
