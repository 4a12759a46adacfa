"""``eqdeq analyze`` and the comparison outputs of ``eqdeq collect --figure``."""
from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import matplotlib.image
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import CONFIG_DIR, TINY
from eqdeq_cli import cli
from eqdeq_cli.runs import train as run
from eqdeq_cli.analysis.report import SUMMARY_KEYS, AnalysisSettings, analysis_stages, analyze_deq
from eqdeq_cli.sweeps.table import collect
from eqdeq_cli.commands.collect import main as collect_main
from eqdeq_cli.sweeps.compare import comparison_figure, comparison_markdown
from eqdeq_cli.deq import DEQ, ProxGradMap, fixed_point_solve
from eqdeq_cli.engine.images import save_reconstructions_h5
from eqdeq_cli.groups import Shifts
from eqdeq_cli.physics import Inpainting

#: Small analysis budgets for the tests.
QUICK = ["analysis.n_images=2", "analysis.n_elements=2", "analysis.n_probes=2", "analysis.power_iter=3",
         "analysis.identifiability_samples=2"]


# -- the report on maps whose answers are known -------------------------------------------
class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * x


class RollRight(nn.Module):
    """A one-pixel circular shift: shift-equivariant, with an orthogonal, far from symmetric Jacobian."""

    def forward(self, x):
        return torch.roll(x, 1, dims=-1)


def _deq(denoiser: nn.Module) -> tuple[DEQ, Inpainting]:
    physics = Inpainting(img_size=12, channels=1, keep_fraction=0.7, seed=0).double()
    fmap = ProxGradMap(denoiser, physics, step_init=1.0, learn_step=False)
    solver = functools.partial(fixed_point_solve, max_iter=60, tol=1e-10, damping=1.0)
    return DEQ(fmap, grad="implicit", forward_solver=solver), physics


def test_report_of_a_scaled_identity_denoiser():
    """D = 0.5·I: equivariant, symmetric, eigenvalues 0.5; T(z) = 0.5(I − AᵀA)z + c has ‖J‖ = 0.5."""
    torch.manual_seed(0)
    deq, physics = _deq(Scale(0.5))
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    settings = AnalysisSettings(n_images=3, n_elements=3, n_probes=3, power_iter=30, identifiability_samples=2)
    report = analyze_deq(deq, Shifts(), physics.A(x), x, settings=settings)
    s = report["summary"]
    assert set(s) == set(SUMMARY_KEYS)
    assert s["equiv_denoiser"] < 1e-12 and s["jac_asym_denoiser"] < 1e-12
    assert s["eig_min"] == pytest.approx(0.5, abs=1e-9) and s["eig_max"] == pytest.approx(0.5, abs=1e-9)
    assert s["lipschitz_max"] == pytest.approx(0.5, abs=1e-6)
    assert 0 <= s["conv_rate"] <= 0.5 + 1e-6  # (exact fixed point after two steps: rate 0)
    assert s["ident_rho"] > 0.05  # inpainting is not shift-equivariant
    json.dumps(report)  # JSON-ready


def test_error_split_of_a_scaled_identity_denoiser():
    """D = 0.5·I on inpainting: the fixed point is 0.5·M x (half the measured pixels, zero elsewhere), so
    the error is −0.5·M x in the range and −(I − M) x in the nullspace; A†y = M x errs in the nullspace only."""
    deq, physics = _deq(Scale(0.5))
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64) + 0.1
    settings = AnalysisSettings(n_images=3, n_elements=1, n_probes=1, power_iter=2, identifiability_samples=0)
    report = analyze_deq(deq, Shifts(), physics.A(x), x, settings=settings)
    s = report["summary"]
    m = physics.A_adjoint(physics.A(torch.ones_like(x)))  # the mask, 1 on measured pixels
    norm = x.flatten(1).norm(dim=1)
    measured = ((m * x).flatten(1).norm(dim=1) / norm).mean().item()
    hidden = (((1 - m) * x).flatten(1).norm(dim=1) / norm).mean().item()
    assert 0.3 < hidden < 0.8
    assert s["err_range"] == pytest.approx(0.5 * measured, rel=1e-8)
    assert s["err_nullspace"] == pytest.approx(hidden, rel=1e-8)
    assert s["err_range_init"] == pytest.approx(0.0, abs=1e-12)
    assert s["err_nullspace_init"] == pytest.approx(hidden, rel=1e-8)
    assert report["error_split"]["reconstruction"]["method"] == "A_dagger"
    assert report["error_split"]["A_dagger"]["null_fraction_mean"] == pytest.approx(hidden, rel=1e-8)


def test_error_split_without_images_is_nan():
    deq, physics = _deq(Scale(0.5))
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    settings = AnalysisSettings(n_images=2, n_elements=1, n_probes=1, power_iter=2, identifiability_samples=0)
    report = analyze_deq(deq, Shifts(), physics.A(x), None, settings=settings)
    assert report["error_split"] is None
    assert all(math.isnan(report["summary"][k]) for k in ("err_range", "err_nullspace", "err_range_init"))


def test_error_split_least_squares_projection_on_ct():
    """CT's FBP is no pseudo-inverse: the nullspace part comes from conjugate gradients, and the two
    parts are orthogonal (their squares add up to the whole error)."""
    from eqdeq_cli.analysis import error_split
    from eqdeq_cli.physics import CTRadon

    physics = CTRadon(img_size=16, channels=1, n_views=5).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=gen, dtype=torch.float64)
    estimate = x + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out = error_split(physics, {"estimate": estimate}, x)["estimate"]
    assert out["method"] == "least_squares"
    whole = ((estimate - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).tolist()
    for r, n, w in zip(out["range"], out["nullspace"], whole):
        assert r ** 2 + n ** 2 == pytest.approx(w ** 2, rel=1e-4)  # to the CG residual
        assert n > 0.3 * w  # 5 views of a 16x16 image: most of the space is unmeasured
    with pytest.raises(ValueError, match=r"error_split: estimate of shape \(2, 1, 8, 8\)"):
        error_split(physics, {"estimate": estimate[..., :8, :8]}, x)


def test_report_detects_an_asymmetric_jacobian():
    deq, physics = _deq(RollRight())
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    settings = AnalysisSettings(n_images=2, n_elements=2, n_probes=16, power_iter=5, identifiability_samples=0)
    s = analyze_deq(deq, Shifts(), physics.A(x), x, settings=settings)["summary"]
    assert s["equiv_denoiser"] < 1e-12  # a roll commutes with shifts
    # J = P (a permutation): ‖P − Pᵀ‖_F / (2‖P‖_F) = 1/√2; the learned part I − P has the same
    assert s["jac_asym_denoiser"] == pytest.approx(2 ** -0.5, rel=0.3)
    assert s["jac_asym_learned"] == pytest.approx(2 ** -0.5, rel=0.3)
    assert math.isnan(s["ident_rho"])  # skipped


@pytest.mark.parametrize("identifiability_samples", [0, 2])
def test_report_announces_each_stage_once_in_order(identifiability_samples):
    """The progress bar of ``eqdeq analyze`` has as many steps as the report announces."""
    deq, physics = _deq(Scale(0.5))
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    settings = AnalysisSettings(n_images=2, n_elements=1, n_probes=1, power_iter=2,
                                identifiability_samples=identifiability_samples)
    seen: list[str] = []
    analyze_deq(deq, Shifts(), physics.A(x), x, settings=settings, on_stage=seen.append)
    assert tuple(seen) == analysis_stages(settings)
    assert ("identifiability" in seen) == (identifiability_samples > 0)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="n_elements"):
        AnalysisSettings(n_elements=0)


# -- eqdeq analyze on a trained checkpoint --------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(cache_dir, tmp_path_factory) -> Path:
    """A one-step tiny CT run with saved reconstructions, trained with continuous rotations."""
    from hydra import compose, initialize_config_dir

    run_dir = tmp_path_factory.mktemp("trained")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "evaluation.n_images=2", "group.exact=false"])
    run.train(cfg, run_dir=run_dir)
    return run_dir


def test_analyze_writes_finite_results_next_to_the_checkpoint(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text("training: config\n")
    assert cli.main(["analyze", f"ckpt={run_dir / 'checkpoints' / 'last.pt'}", *QUICK]) == 0
    report = json.loads((run_dir / "analysis.json").read_text())
    assert set(report["summary"]) == set(SUMMARY_KEYS)
    assert all(math.isfinite(v) for v in report["summary"].values()), report["summary"]
    assert report["equivariance"]["mask"] == "disc"  # continuous rotations: inside the inscribed disc
    # with the default group (quarter turns) the whole image is compared
    assert cli.main(["analyze", f"ckpt={run_dir}", *QUICK, "group.exact=true", f"analysis.out={tmp_path / 'q'}"]) == 0
    assert json.loads((tmp_path / "q" / "analysis.json").read_text())["equivariance"]["mask"] is None
    assert len(report["equivariance"]["denoiser"]["per_pair"]) == 2
    assert report["n_images"] == 2 and report["step"] == 1
    assert (run_dir / "analysis.png").stat().st_size > 0 and (run_dir / "analyze.log").is_file()
    # the training run's own composed config is left alone
    assert (run_dir / ".hydra" / "config.yaml").read_text() == "training: config\n"


def test_analyze_applies_overrides_and_writes_to_out(trained_run, tmp_path):
    out = tmp_path / "out"
    code = cli.main(["analyze", f"ckpt={trained_run}", *QUICK, "solver.eval.max_iter=2", f"analysis.out={out}"])
    assert code == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["summary"]["solver_iters"] <= 2
    assert not (trained_run / "analysis.json").exists()


def test_analyze_progress_follows_the_trainer_setting(trained_run, tmp_path, capsys):
    """The run was trained with trainer.progress=false: no bar, unless the command line asks."""
    args = ["analyze", f"ckpt={trained_run}", *QUICK, f"analysis.out={tmp_path}"]
    assert cli.main(args) == 0
    assert "analyze:" not in capsys.readouterr().err
    assert cli.main([*args, "trainer.progress=true"]) == 0
    assert "analyze:" in capsys.readouterr().err


def test_analyze_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["analyze", f"ckpt={tmp_path / 'nope.pt'}", f"analysis.out={tmp_path}"]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli.main(["analyze", f"analysis.out={tmp_path}"]) == 1
    assert "needs a checkpoint" in capsys.readouterr().err


def _sweep_job(root: Path, num: int, overrides: list[str], recon: dict[str, torch.Tensor] | None,
               metrics: dict, source: Path | None = None) -> Path:
    """A job directory in the layout ``eqdeq train -m`` writes."""
    job = root / str(num)
    if source is not None:
        shutil.copytree(source, job)
    (job / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"seed": 0, "evaluation": {"data_range": 1.0}}), job / ".hydra" / "config.yaml")
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "status.json").write_text(json.dumps({"status": "completed"}))
    if recon is not None:
        save_reconstructions_h5(job / "reconstructions" / "test.h5", **recon)
    return job


def test_analyze_a_sweep_then_collect_shows_the_analysis_columns(trained_run, tmp_path):
    root = tmp_path / "sweep"
    for num, seed in enumerate((0, 1)):
        _sweep_job(root, num, ["experiment=ct_ei_implicit", f"seed={seed}"], None,
                   {"psnr": 20.0 + seed, "psnr_init": 19.0, "ssim": 0.5, "ssim_init": 0.4}, source=trained_run)
    assert cli.main(["analyze", f"sweep={root}", *QUICK]) == 0
    assert all((root / str(n) / "analysis.json").is_file() for n in (0, 1))
    table = collect(root)
    assert {f"an_{k}" for k in SUMMARY_KEYS} <= set(table.metrics)
    markdown = comparison_markdown(table)
    assert "equiv. error D" in markdown and "‖∂T/∂z‖" in markdown


# -- the comparison table and figure on a fake sweep ----------------------------------------
METHODS = ("ct_ei_implicit", "ct_mc", "ct_supervised")


def _fake_comparison(root: Path, *, other_truth_for: str | None = None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 16, 16, generator=g)
    x_init = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    num = 0
    for m, method in enumerate(METHODS):
        for seed in (0, 1):
            truth = torch.rand(x.shape, generator=g) if method == other_truth_for else x
            recon = {"x": truth, "y": torch.zeros(5, 1, 4, 4), "x_init": x_init, "x_hat": (x + 0.01 * (m + 1)) * 0.9}
            metrics = {"psnr": 25.0 + m + 0.1 * seed, "ssim": 0.7, "psnr_init": 21.5, "ssim_init": 0.5,
                       "iters_mean": 12.0, "train_time_s": 100.0 + seed}
            _sweep_job(root, num, [f"experiment={method}", f"seed={seed}"], recon, metrics)
            num += 1


def test_collect_figure_writes_the_comparison(tmp_path, capsys):
    _fake_comparison(tmp_path)
    assert collect_main([str(tmp_path), "--figure", "--n-images", "3"]) == 0
    comparison = (tmp_path / "results_comparison.md").read_text()
    assert capsys.readouterr().out == comparison
    lines = comparison.splitlines()
    assert lines[2] == "| A†y (baseline) | 6 | 21.5 ± 0 | 0.5 ± 0 | – | – |"
    assert [ln.split(" | ")[0].lstrip("| ") for ln in lines[3:6]] == list(METHODS)
    assert lines[3] == "| ct_ei_implicit | 2 | 25.050 ± 0.071 | 0.7 ± 0 | 100.50 ± 0.71 | 12 ± 0 |"
    image = matplotlib.image.imread(tmp_path / "results_figure.png")
    # 3 rows of 1.6-inch cells (+ title strip), 2 + 3 columns, at 100 dpi
    assert image.shape[:2] == (round(3 * 160 + 30), 5 * 160)


def test_figure_refuses_methods_evaluated_on_other_images(tmp_path):
    _fake_comparison(tmp_path, other_truth_for="ct_mc")
    with pytest.raises(ValueError, match="other ground-truth images"):
        comparison_figure(collect(tmp_path), tmp_path / "f.png")


def test_figure_needs_saved_reconstructions(tmp_path, capsys):
    _sweep_job(tmp_path, 0, ["experiment=ct_mc", "seed=0"], None, {"psnr": 1.0})
    assert collect_main([str(tmp_path), "--figure"]) == 1
    assert "reconstructions/test.h5" in capsys.readouterr().err
