"""Experiment presets of the comparison: they compose, build, differ only where they should,
train for a step, and the identifiability preflight accepts their groups."""
from __future__ import annotations

import logging
import math
import pytest
import torch

from conftest import CONFIG_DIR, TINY
from eqdeq_cli.runs import train as run
from eqdeq_cli.analysis.preflight import check_group, ei_terms
from eqdeq_cli.components import build_components, build_data, build_denoiser, build_group, build_loss, build_physics
from eqdeq_cli.data import PhantomData

TASKS = {  # task -> (operator class, group class of the EI presets)
    "ct": ("CTRadon", "Rotations"),
    "mri": ("MRICartesian", "Rotations"),
    "inpainting": ("Inpainting", "Shifts"),
}
#: The denoiser of each task's presets.
MODELS = {"ct": "DnCNN", "mri": "DnCNN", "inpainting": "DnCNN"}
METHODS = {  # method -> (loss terms, gradient mode)
    "ei_implicit": ({"mc", "ei"}, "implicit"),
    "ei_jfb": ({"mc", "ei"}, "jfb"),
    "ei_unrolled": ({"mc", "ei"}, "unrolled"),
    "mc": ({"mc"}, "implicit"),
    "supervised": ({"supervised"}, "implicit"),
}
PRESETS = [f"{t}_{m}" for t in TASKS for m in METHODS]


def _target_class(node) -> str:
    return str(node._target_).rsplit(".", 1)[-1]


def test_the_preset_folder_holds_exactly_the_comparison():
    names = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")}
    assert names == set(PRESETS) | {"mri_ei_rotations"}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_to_its_task_and_method(compose_cfg, preset):
    task, method = preset.split("_", 1)
    cfg = compose_cfg([f"experiment={preset}"])
    physics_cls, group_cls = TASKS[task]
    terms, mode = METHODS[method]
    assert _target_class(cfg.physics) == physics_cls
    assert _target_class(cfg.group) == group_cls
    assert set(cfg.loss.terms) == terms
    assert cfg.grad.mode == mode
    assert _target_class(cfg.model) == MODELS[task] and _target_class(cfg.data) == "PhantomData"


#: (task, method, key) of the one preset whose map differs from its task's others: MC alone on CT,
#: anchored because nothing trains its map on the nullspace (ANCHORS below).
OWN_MAP = {("ct", "mc", "map")}


@pytest.mark.parametrize("task", list(TASKS))
def test_presets_of_a_task_differ_only_in_loss_and_gradient(compose_cfg, task):
    """Same data, operator, group, model, solver and training budget: a fair comparison."""
    cfgs = {m: compose_cfg([f"experiment={task}_{m}"]) for m in METHODS}
    for key in ("data", "physics", "group", "model", "map", "solver", "trainer", "evaluation", "seed"):
        values = {m: str(c[key]) for m, c in cfgs.items() if (task, m, key) not in OWN_MAP}
        assert len(set(values.values())) == 1, f"{key} differs between {task} presets: {values}"
    # the gradient settings other than the mode (the sample cache, the fallback, ...) too
    grads = {m: str({k: v for k, v in c.grad.items() if k != "mode"}) for m, c in cfgs.items()}
    assert len(set(grads.values())) == 1, f"grad settings differ between {task} presets: {grads}"


def test_ct_presets_keep_the_default_run_size(compose_cfg):
    """The CT presets are the default run on the ellipse phantoms (the default data mixes in
    the anatomy-like ones): the same sizes, operator, model, solvers and training loop, with the
    solver settings their comparison was measured with (no sample cache, 10 backward iterations,
    the solver's tolerance from the first step; the default run has all three)."""
    default = compose_cfg(["grad.sample_cache=0", "solver.backward.max_iter=10", "trainer.forward_tol_start=null"])
    assert default.data.kind == "mixed"
    for method in METHODS:
        cfg = compose_cfg([f"experiment=ct_{method}"])
        assert cfg.data == compose_cfg(["data=phantoms"]).data
        assert {k: v for k, v in cfg.data.items() if k != "kind"} == \
            {k: v for k, v in default.data.items() if k != "kind"}, f"ct_{method} changes the data sizes"
        for key in ("physics", "model", "solver"):
            assert cfg[key] == default[key], f"ct_{method} changes {key} of the default run"
        assert cfg.grad.sample_cache == 0, f"ct_{method} starts from the sample cache"
        budget = ("max_steps", "max_minutes")
        assert {k: v for k, v in cfg.trainer.items() if k not in budget} == \
            {k: v for k, v in default.trainer.items() if k not in budget}, f"ct_{method} changes the training loop"


@pytest.mark.parametrize("preset", [f"{task}_{method}" for task in TASKS for method in METHODS])
def test_every_preset_trains_within_its_budget(compose_cfg, preset):
    """300 steps under a 5.5-minute cap, so a preset's run, evaluation included, fits in 6 minutes
    on the 2-core CPU the budgets were measured on; the default run keeps its 400 steps."""
    cfg = compose_cfg([f"experiment={preset}"])
    assert (cfg.trainer.max_steps, cfg.trainer.max_minutes) == (300, 5.5)
    default = compose_cfg([])
    assert (default.trainer.max_steps, default.trainer.max_minutes) == (400, 8)


def test_the_old_mri_preset_name_is_the_implicit_preset(compose_cfg):
    assert compose_cfg(["experiment=mri_ei_rotations"]) == compose_cfg(["experiment=mri_ei_implicit"])


#: Presets built and trained in the default suite; the others run with the slow tests (the
#: runner's own tests already cover every gradient mode and operator).
FAST = {"ct_ei_implicit", "ct_supervised", "mri_ei_implicit", "inpainting_ei_implicit"}


def _marked(presets):
    return [pytest.param(p, marks=[] if p in FAST else [pytest.mark.slow]) for p in presets]


@pytest.mark.parametrize("preset", _marked(PRESETS))
def test_preset_builds(compose_cfg, preset):
    """Every component of the preset builds (on 32-pixel phantoms, to stay fast)."""
    task, method = preset.split("_", 1)
    comps = build_components(compose_cfg([f"experiment={preset}", "data=tiny"]))
    assert type(comps.physics).__name__ == TASKS[task][0]
    assert type(comps.group).__name__ == TASKS[task][1]
    assert set(comps.loss.terms) == METHODS[method][0]
    assert comps.deq.grad == METHODS[method][1]
    assert comps.loss.needs_ground_truth == (method == "supervised")


@pytest.mark.parametrize("preset", _marked(f"ct_{m}" for m in METHODS))
def test_each_method_trains_a_step_on_tiny_data(compose_cfg, tmp_path, preset):
    summary = run.train(compose_cfg([f"experiment={preset}", *TINY]), run_dir=tmp_path)
    assert summary["steps"] == 1
    assert math.isfinite(summary["psnr"]) and math.isfinite(summary["psnr_init"])
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


#: The map's anchor η of each task's presets: MRI and inpainting, whose gradient step is the
#: identity on the nullspace of A, anchor the map to A†y (docs/stability.md).
#: MC alone on CT is anchored too: its loss trains nothing on the nullspace of A, where the
#: unanchored map stays at ‖∂T/∂z‖₂ = 1 and its solves did not converge.
ANCHORS = {"ct": 0.0, "mri": 0.05, "inpainting": 0.05, "ct_mc": 0.05}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_anchor_the_map_where_the_data_step_leaves_a_nullspace_unchanged(compose_cfg, preset):
    cfg = compose_cfg([f"experiment={preset}"])
    assert cfg.map.anchor == ANCHORS.get(preset, ANCHORS[preset.split("_", 1)[0]])
    if preset.startswith("ct_"):  # otherwise the map of the default run
        assert {k: v for k, v in cfg.map.items() if k != "anchor"} == \
            {k: v for k, v in compose_cfg([]).map.items() if k != "anchor"}


@pytest.mark.parametrize("task", ["mri", "inpainting"])
def test_anchored_presets_stay_contractive_and_converge_in_a_short_training(compose_cfg, tmp_path, task):
    # Eight EI-implicit steps at the presets' solver budgets (on 16-pixel phantoms): every step
    # finite, no backward solve falls back, the map contracts and every test sample converges.
    overrides = [f"experiment={task}_ei_implicit", *TINY, "trainer.max_steps=8",
                 "solver.forward.max_iter=60", "solver.backward.max_iter=30", "solver.eval.max_iter=100",
                 "trainer.contraction_every=4", "trainer.contraction_iters=20", "trainer.eval_every=0"]
    summary = run.train(compose_cfg(overrides), run_dir=tmp_path)
    assert summary["steps"] == 8 and math.isfinite(summary["psnr"]) and summary["nonfinite"] == 0
    assert summary["bwd_fallback_total"] == 0
    assert summary["lipschitz"] < 1.0
    assert summary["converged_frac"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mri", "inpainting"])
def test_other_tasks_train_a_step_on_tiny_data(compose_cfg, tmp_path, task):
    summary = run.train(compose_cfg([f"experiment={task}_ei_implicit", *TINY]), run_dir=tmp_path)
    assert summary["steps"] == 1 and math.isfinite(summary["psnr"])


def test_paper_scale_enlarges_a_preset(compose_cfg):
    base = compose_cfg(["experiment=ct_ei_implicit"])
    paper = compose_cfg(["experiment=ct_ei_implicit", "+scale=paper"])
    assert paper.data.img_size == 128 and paper.physics.img_size == 128
    assert paper.data.n_train > base.data.n_train
    assert paper.model.width > base.model.width and paper.model.depth > base.model.depth
    assert paper.trainer.max_steps > base.trainer.max_steps and paper.trainer.max_minutes is None
    # only sizes and budgets change: the method is the preset's
    for key in ("loss", "grad", "group", "map"):
        assert paper[key] == base[key]
    assert paper.physics.n_views == base.physics.n_views


def test_paper_scale_builds(compose_cfg, tmp_path):
    cfg = compose_cfg(["experiment=ct_ei_implicit", "+scale=paper", f"data.cache_dir={tmp_path}"])
    physics = build_physics(cfg, PhantomData(img_size=128, n_train=1, n_val=1, n_test=1, cache_dir=tmp_path))
    assert tuple(physics.img_shape) == (1, 128, 128)
    denoiser = build_denoiser(cfg, channels=1)
    x = torch.rand(1, 1, 128, 128)
    assert denoiser(x).shape == x.shape


# -- identifiability preflight through the real configs -------------------------------------
def _physics_group_loss(compose_cfg, overrides):
    """The preset's operator (at 32 pixels), group and loss."""
    cfg = compose_cfg([*overrides, "data=tiny"])
    data = build_data(cfg)
    return build_physics(cfg, data), build_group(cfg), build_loss(cfg)


def test_preflight_warns_for_mri_with_shifts(compose_cfg):
    physics, group, loss = _physics_group_loss(compose_cfg, ["experiment=mri_ei_implicit", "group=shifts"])
    message = check_group(physics, group, loss)
    assert message is not None
    assert "Shifts" in message and "MRICartesian" in message and "rotations" in message


@pytest.mark.parametrize("preset", ["ct_ei_implicit", "mri_ei_implicit", "inpainting_ei_implicit"])
def test_preflight_accepts_the_ei_presets(compose_cfg, preset):
    physics, group, loss = _physics_group_loss(compose_cfg, [f"experiment={preset}"])
    assert ei_terms(loss) == ["ei"]
    assert check_group(physics, group, loss) is None


def test_preflight_ignores_losses_without_an_ei_term(compose_cfg):
    """MC-only and supervised runs do not use the group: no warning even for MRI × shifts."""
    for preset in ("mri_mc", "mri_supervised"):
        physics, group, loss = _physics_group_loss(compose_cfg, [f"experiment={preset}", "group=shifts"])
        assert ei_terms(loss) == []
        assert check_group(physics, group, loss) is None


def test_preflight_ignores_an_ei_term_of_weight_zero(compose_cfg):
    physics, group, loss = _physics_group_loss(
        compose_cfg, ["experiment=mri_ei_implicit", "group=shifts", "loss.terms.ei.weight=0"])
    assert check_group(physics, group, loss) is None


def test_preflight_needs_a_group_for_ei(compose_cfg):
    physics, _, loss = _physics_group_loss(compose_cfg, ["experiment=inpainting_ei_implicit"])
    with pytest.raises(ValueError, match="group"):
        check_group(physics, None, loss)


def test_preflight_of_the_default_ct_run_emits_no_warning(compose_cfg, caplog):
    """A warning must name something the user can change; the preflight's CG budget is not a setting."""
    physics, group, loss = _physics_group_loss(compose_cfg, ["experiment=ct_ei_implicit"])
    with caplog.at_level(logging.WARNING):
        assert check_group(physics, group, loss) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_anchored_preset_builds_with_the_other_map(compose_cfg):
    comps = build_components(compose_cfg(["experiment=mri_ei_implicit", "map=hqs", "data=tiny"]))
    assert type(comps.deq.fmap).__name__ == "HQSMap" and comps.deq.fmap.anchor == 0.05


def test_a_bad_anchor_is_one_line_naming_the_map(tmp_path, capfd):
    from eqdeq_cli import cli

    assert cli.main(["train", "debug=smoke", "map.anchor=1.5", f"hydra.run.dir={tmp_path}"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert "map: anchor must be a real number in [0.0, 1.0), got 1.5" in err


def test_only_the_supervised_mri_reference_carries_the_spectral_penalty(compose_cfg):
    """Supervised MRI grows an expansive map without it (docs/stability.md); every other preset
    trains without a regulariser, so the methods of a task still differ only in loss and gradient."""
    for task in TASKS:
        for method in METHODS:
            cfg = compose_cfg([f"experiment={task}_{method}"])
            if (task, method) == ("mri", "supervised"):
                assert cfg.regularizer._target_ == "eqdeq_cli.deq.SpectralPenalty"
            else:
                assert cfg.get("regularizer") is None, f"{task}_{method}"
