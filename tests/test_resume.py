"""Resuming continues the same run only: same experiment, its own newest readable checkpoint."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from conftest import TINY, StopAt
from eqdeq_cli import cli
from eqdeq_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from eqdeq_cli.errors import CheckpointError
from eqdeq_cli.runs import train as run
from eqdeq_cli.runs.resume import (RESUMABLE_KEYS, ResumeRefused, _describe, _differences, check_same_experiment,
                                   config_differences, restoring_overrides)
from eqdeq_cli.sweeps.table import collect, config_leaves

RUN = [*TINY, "trainer.max_steps=2", "trainer.checkpoint_every=1"]


def _files(run_dir, names=("checkpoints/last.pt", "metrics.json", "status.json", ".hydra/config.yaml",
                           ".hydra/overrides.yaml")):
    return {name: (run_dir / name).read_bytes() for name in names if (run_dir / name).is_file()}


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "[ERROR]" in line]
    assert len(lines) == 1, err
    return lines[0]


# -- a different experiment is refused ---------------------------------------------------------
def test_config_differences_name_each_changed_key_and_skip_the_resumable_ones():
    saved = {"seed": 0, "physics": {"_target_": "eqdeq_cli.physics.CTRadon", "n_views": 50},
             "data": {"n_train": 8, "cache_dir": None}, "trainer": {"max_steps": 2, "lr": 1e-3, "device": "cpu"},
             "loss": {"terms": {"mc": {"weight": 1.0}, "ei": {"weight": "auto"}}}}
    same = json.loads(json.dumps(saved))
    same["trainer"].update(max_steps=400, device="cuda")
    same["data"]["cache_dir"] = "/scratch"
    assert config_differences(saved, same) == []
    other = json.loads(json.dumps(saved))
    other["physics"] = {"_target_": "eqdeq_cli.physics.MRIMask", "acceleration": 4}
    other["data"]["n_train"] = 16
    del other["loss"]["terms"]["ei"]
    other["trainer"]["lr"] = 1  # an int equal to no float here: compared by value
    assert config_differences(saved, other) == [
        "physics: CTRadon → MRIMask", "data.n_train: 8 → 16", "trainer.lr: 0.001 → 1",
        "loss.terms.ei: {\"weight\": \"auto\"} → (absent)"]
    assert config_differences({"x": 1.0}, {"x": 1}) == []  # 1 and 1.0 are the same setting
    assert config_differences({"x": True}, {"x": 1}) == ["x: true → 1"]
    assert "trainer.max_steps" in RESUMABLE_KEYS and "seed" not in RESUMABLE_KEYS


def test_a_key_added_later_matches_a_checkpoint_without_it_only_at_the_former_behaviour():
    saved = {"map": {"_target_": "eqdeq_cli.deq.ProxGradMap", "step_max": None},
             "loss": {"terms": {"ei": {"_target_": "eqdeq_cli.losses.EILoss", "weight": "auto"}}}}
    saved["grad"] = {"mode": "implicit"}
    new = json.loads(json.dumps(saved))
    new["map"]["anchor"] = 0.0
    new["map"]["preconditioner"] = "none"
    new["grad"]["sample_cache"] = 0
    assert config_differences(saved, new) == []
    new["map"]["anchor"] = 0.05
    new["map"]["preconditioner"] = "ramp"
    new["grad"]["sample_cache"] = 64
    assert config_differences(saved, new) == ["map.anchor: (absent) → 0.05", "map.preconditioner: (absent) → \"ramp\"",
                                              "grad.sample_cache: (absent) → 64"]
    new["map"]["unknown_new_key"] = 1  # not a registered addition: still a difference
    assert "map.unknown_new_key: (absent) → 1" in config_differences(saved, new)


def test_phantom_runs_from_before_data_kind_resume_as_ellipses():
    phantoms = {"_target_": "eqdeq_cli.data.PhantomData", "img_size": 64}
    saved = {"data": dict(phantoms)}
    assert config_differences(saved, {"data": {**phantoms, "kind": "ellipses"}}) == []
    found = [d for d in _differences(saved, {"data": {**phantoms, "kind": "mixed"}})]
    assert [_describe(d) for d in found] == ['data.kind: (absent) → "mixed"']
    assert restoring_overrides(found) == ["data.kind=ellipses"]
    # collect compares the same way, and a data source without kinds gets none
    assert config_leaves(saved)["data.kind"] == "ellipses"
    assert "data.kind" not in config_leaves({"data": {"_target_": "eqdeq_cli.data.BrainTemplateData"}})


def test_reflection_runs_from_before_identity_resume_drawing_the_identity(tmp_path):
    flips = {"_target_": "eqdeq_cli.groups.Reflections", "axes": "both"}
    saved = {"group": dict(flips)}
    assert config_differences(saved, {"group": {**flips, "identity": True}}) == []
    found = _differences(saved, {"group": {**flips, "identity": False}})
    assert [_describe(d) for d in found] == ["group.identity: (absent) → false"]
    assert restoring_overrides(found) == ["group.identity=true"]
    with pytest.raises(ResumeRefused, match="add group.identity=true to the command"):
        check_same_experiment(saved, {"group": {**flips, "identity": False}}, tmp_path / "last.pt", "auto")
    assert config_leaves(saved)["group.identity"] == "true"
    assert "group.identity" not in config_leaves({"group": {"_target_": "eqdeq_cli.groups.Shifts"}})


def test_a_run_whose_default_changed_since_is_told_the_override_that_continues_it(tmp_path):
    # a checkpoint written before group.interpolation existed and while rotations were continuous
    saved = {"seed": 0, "group": {"_target_": "eqdeq_cli.groups.Rotations", "max_angle": 180.0, "exact": False,
                                  "padding": "zeros"},
             "regularizer": {"_target_": "eqdeq_cli.deq.SpectralPenalty", "weight": 1.0}, "note": None}
    now = {"seed": 0, "group": {"_target_": "eqdeq_cli.groups.Rotations", "max_angle": 180.0, "exact": True,
                                "padding": "zeros", "interpolation": "bilinear", "turns": None},
           "regularizer": {"_target_": "eqdeq_cli.deq.SpectralPenalty", "weight": 1.0}, "note": None}
    source = tmp_path / "last.pt"
    with pytest.raises(ResumeRefused) as err:
        check_same_experiment(saved, now, source, "auto")
    assert ("checkpoint → now: group.exact: false → true; group.turns: null → [1, 3]): to continue it as it was "
            "trained, add group.exact=false group.turns=null to the command") in str(err.value)
    now["note"], now["seed"] = "x", 3
    with pytest.raises(ResumeRefused, match="add seed=0 group.exact=false group.turns=null note=null to the command"):
        check_same_experiment(saved, now, source, "auto")
    saved["note"] = "two words"
    with pytest.raises(ResumeRefused, match="add seed=0 group.exact=false group.turns=null note='two words' to the command"):
        check_same_experiment(saved, now, source, "auto")
    # no single override restores a changed class or a removed node: the general advice
    now["regularizer"] = None
    with pytest.raises(ResumeRefused, match=r"run the same command as the run did \(its \.hydra/overrides\.yaml\)"):
        check_same_experiment(saved, now, source, "auto")
    check_same_experiment(saved, {**saved, "group": {**saved["group"], "interpolation": "bilinear"}}, source, "auto")
    # a key added since, whose default is not the former behaviour: its former value is the override
    saved["map"] = {"_target_": "eqdeq_cli.deq.ProxGradMap", "anchor": 0.0}
    now = {**saved, "map": {**saved["map"], "preconditioner": "auto"}}
    with pytest.raises(ResumeRefused, match="add map.preconditioner=none to the command"):
        check_same_experiment(saved, now, source, "auto")


@pytest.mark.parametrize("physics, refused", [("eqdeq_cli.physics.CTRadon", True),
                                              ("eqdeq_cli.physics.MRICartesian", False),
                                              ("eqdeq_cli.physics.Inpainting", False)])
def test_auto_preconditioning_compares_as_what_it_means_under_the_physics(tmp_path, physics, refused):
    # a checkpoint written before the preconditioner keys existed: auto changes CT, nothing else
    saved = {"physics": {"_target_": physics}, "map": {"_target_": "eqdeq_cli.deq.ProxGradMap", "anchor": 0.0},
             "loss": {"terms": {"mc": {"_target_": "eqdeq_cli.losses.MCLoss", "weight": 1.0}}}}
    now = json.loads(json.dumps(saved))
    now["map"]["preconditioner"] = "auto"
    now["loss"]["terms"]["mc"]["preconditioner"] = "auto"
    source = tmp_path / "last.pt"
    if refused:
        with pytest.raises(ResumeRefused, match="add map.preconditioner=none loss.terms.mc.preconditioner=none "
                                                "to the command"):
            check_same_experiment(saved, now, source, "auto")
    else:
        check_same_experiment(saved, now, source, "auto")
    # a run written with auto is the same experiment as one that names what auto meant for it
    named = json.loads(json.dumps(now))
    named["map"]["preconditioner"] = "ramp" if refused else "none"
    assert config_differences(now, named) == []
    named["map"]["preconditioner"] = "none" if refused else "ramp"
    assert len(config_differences(now, named)) == 1


def test_rerunning_a_directory_with_another_physics_is_refused_and_leaves_the_run_as_it_was(
        tmp_path, cache_dir, capfd):
    run_dir = tmp_path / "run"
    assert cli.main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 0
    before = _files(run_dir)
    assert json.loads(before["status.json"])["status"] == "completed"
    capfd.readouterr()
    assert cli.main(["train", *RUN, "physics=mri", f"hydra.run.dir={run_dir}"]) == 1
    line = _one_error_line(capfd.readouterr().err)
    assert f"cannot resume {run_dir / 'checkpoints' / 'last.pt'}" in line
    assert "physics: CTRadon → MRICartesian" in line and ".hydra/overrides.yaml" in line
    assert _files(run_dir) == before  # status, .hydra/ and checkpoint untouched
    assert collect(run_dir).jobs[0].status == "ok"


@pytest.mark.parametrize("override, named", [
    ("data.n_train=6", "data.n_train: 4 → 6"),
    ("loss=mc", "loss.terms.ei"),  # same weights, another loss
    ("group=shifts", "group: Rotations → Shifts"),  # same weights, another group
    ("seed=1", "seed: 0 → 1"),
    ("trainer.optimizer.lr=1e-4", "trainer.optimizer.lr: 0.002 → 0.0001"),
])
def test_resume_refuses_a_changed_experiment_naming_the_key(compose_cfg, tmp_path, override, named):
    run.train(compose_cfg(RUN), run_dir=tmp_path)
    last = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ResumeRefused, match=r"cannot resume .*last\.pt: it was trained with other settings") as err:
        run.train(compose_cfg([*RUN, "trainer.max_steps=3", override]), run_dir=tmp_path)
    assert named in str(err.value) and "\n" not in str(err.value)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == last


def test_resume_accepts_a_longer_run_other_logging_and_time_cap(compose_cfg, tmp_path):
    run.train(compose_cfg(RUN), run_dir=tmp_path)
    summary = run.train(compose_cfg([*RUN, "trainer.max_steps=3", "trainer.max_minutes=30", "trainer.log_every=1",
                                     "trainer.eval_every=1", "trainer.checkpoint_every=0", "evaluation.batch_size=1",
                                     "trainer.device=cpu"]), run_dir=tmp_path)
    assert summary["steps"] == 3


# -- the run's own checkpoint wins over the path it started from ------------------------------------
def test_resume_path_starts_a_run_and_a_rerun_continues_its_own_checkpoint(compose_cfg, tmp_path, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    run.train(compose_cfg(RUN), run_dir=a)
    a_last = (a / "checkpoints" / "last.pt").read_bytes()
    command = [*RUN, "trainer.max_steps=6", f"resume={a}"]
    assert run.train(compose_cfg(command), run_dir=b, callbacks=[StopAt(4)]) == {"status": "stopped", "step": 4}
    with caplog.at_level(logging.INFO, logger="eqdeq_cli"):
        summary = run.train(compose_cfg(command), run_dir=b)  # the same command again (a requeue)
    assert f"resumed from {b / 'checkpoints' / 'last.pt'} at step 4" in caplog.text
    assert summary["steps"] == 6 and load_checkpoint(b)["step"] == 6
    assert (a / "checkpoints" / "last.pt").read_bytes() == a_last


# -- a damaged last.pt --------------------------------------------------------------------------------
def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_last_pt_resumes_from_the_newest_readable_checkpoint_to_the_same_result(
        tmp_path, cache_dir, capfd):
    command = [*TINY, "trainer.max_steps=3", "trainer.eval_every=1", "trainer.checkpoint_every=1"]
    run_dir = tmp_path / "run"
    assert cli.main(["train", *command, f"hydra.run.dir={run_dir}"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best_step = load_checkpoint(run_dir / "checkpoints" / "best.pt")["step"]
    _truncate(run_dir / "checkpoints" / "last.pt")
    capfd.readouterr()
    assert cli.main(["train", *command, f"hydra.run.dir={run_dir}"]) == 0
    err = capfd.readouterr().err
    warned = [line for line in err.splitlines() if "WARNING" in line and "last.pt" in line]
    assert warned and "best.pt" in warned[0] and f"(step {best_step})" in warned[0]
    again = json.loads((run_dir / "metrics.json").read_text())
    assert again["steps"] == 3 and again["psnr"] == metrics["psnr"]  # retrained the same steps
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


def test_an_unreadable_checkpoint_without_fallback_leaves_the_completed_run_collectable(tmp_path, cache_dir, capfd):
    run_dir = tmp_path / "run"
    assert cli.main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 0
    (run_dir / "checkpoints" / "best.pt").unlink()
    _truncate(run_dir / "checkpoints" / "last.pt")
    before = _files(run_dir)
    capfd.readouterr()
    assert cli.main(["train", *RUN, f"hydra.run.dir={run_dir}"]) == 1
    line = _one_error_line(capfd.readouterr().err)
    assert "last.pt" in line and "no other readable checkpoint" in line
    assert _files(run_dir) == before
    job = collect(run_dir).jobs[0]
    assert job.status == "ok" and job.metrics["psnr"] == json.loads(before["metrics.json"])["psnr"]


def test_an_unreadable_checkpoint_names_the_readable_ones_beside_it(compose_cfg, tmp_path):
    run.train(compose_cfg([*RUN, "trainer.eval_every=1"]), run_dir=tmp_path)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"]
    _truncate(tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointError, match=rf"readable beside it: .*best\.pt \(step {best}\)"):
        load_checkpoint(tmp_path)


# -- a checkpoint of another architecture --------------------------------------------------------------
def test_a_checkpoint_of_another_width_is_one_line_on_eval_and_on_resume(compose_cfg, tmp_path, cache_dir, capfd):
    run.train(compose_cfg(RUN), run_dir=tmp_path / "a")  # model.width=8
    capfd.readouterr()
    code = cli.main(["eval", f"ckpt={tmp_path / 'a'}", "model.width=16", "evaluation.n_images=0",
                     f"hydra.run.dir={tmp_path / 'eval'}"])
    assert code == 1
    line = _one_error_line(capfd.readouterr().err)
    assert str(tmp_path / "a") in line and "parameter shapes differ" in line and "(8, 1, 3, 3) vs (16, 1, 3, 3)" in line

    payload = load_checkpoint(tmp_path / "a")  # a checkpoint whose config says 16 but whose weights are 8 wide
    payload["config"]["model"]["width"] = 16
    save_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt", payload)
    with pytest.raises(CheckpointError, match=r"b/checkpoints/last\.pt: .*parameter shapes differ"):
        run.train(compose_cfg([*RUN, "model.width=16"]), run_dir=tmp_path / "b")


def test_load_model_state_names_the_mismatched_parameters_and_loads_nothing(compose_cfg):
    from eqdeq_cli.components import build_components
    from eqdeq_cli.engine.checkpoint import load_model_state, model_state

    small = build_components(compose_cfg([*TINY, "model.depth=3"])).deq
    wide = build_components(compose_cfg([*TINY, "model.depth=3", "model.width=16"])).deq
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    with pytest.raises(ValueError, match=r"parameter shapes differ .*net\.0\.weight \(8, 1, 3, 3\) vs \(16, 1, 3, 3\)"
                                         r".* and 2 more \(was it trained") as err:
        load_model_state(wide, model_state(small))
    assert "\n" not in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in wide.state_dict().items())


def test_a_run_from_before_turns_resumes_with_the_turns_it_drew(tmp_path):
    rotations = {"_target_": "eqdeq_cli.groups.Rotations", "max_angle": 180.0, "padding": "zeros",
                 "interpolation": "bilinear"}
    now = {"seed": 0, "group": {**rotations, "exact": True, "turns": None}}
    before = {"seed": 0, "group": {**rotations, "exact": True}}  # drew all four quarter turns
    with pytest.raises(ResumeRefused) as err:
        check_same_experiment(before, now, tmp_path / "last.pt", "auto")
    assert ("(checkpoint → now: group.turns: [0, 1, 2, 3] → [1, 3]): to continue it as it was trained, add "
            "group.turns=[0,1,2,3] to the command") in str(err.value)
    check_same_experiment(before, {"seed": 0, "group": {**rotations, "exact": True, "turns": [3, 0, 2, 1]}},
                          tmp_path / "last.pt", "auto")
    # null and its meaning compare equal; a continuous-angle run from before resumes unchanged
    check_same_experiment({"seed": 0, "group": {**rotations, "exact": True, "turns": [1, 3]}}, now,
                          tmp_path / "last.pt", "auto")
    continuous = {"seed": 0, "group": {**rotations, "exact": False}}
    check_same_experiment(continuous, {"seed": 0, "group": {**rotations, "exact": False, "turns": None}},
                          tmp_path / "last.pt", "auto")


@pytest.mark.parametrize("turns", [["a", 1], [3, True]])
def test_turns_that_are_not_integers_are_compared_as_given_not_sorted(tmp_path, turns):
    # sorting ['a', 1] raised a TypeError with a traceback; the group refuses such turns when built
    rotations = {"_target_": "eqdeq_cli.groups.Rotations", "max_angle": 180.0, "exact": True, "padding": "zeros",
                 "interpolation": "bilinear"}
    saved = {"seed": 0, "group": {**rotations, "turns": None}}
    with pytest.raises(ResumeRefused, match=r"group\.turns: \[1, 3\] → "):
        check_same_experiment(saved, {"seed": 0, "group": {**rotations, "turns": turns}}, tmp_path / "last.pt",
                              "auto")
    assert config_leaves({"group": {**rotations, "turns": turns}})["group.turns"] == json.dumps(turns)


@pytest.mark.parametrize("physics, refused", [("eqdeq_cli.physics.CTRadon", True),
                                              ("eqdeq_cli.physics.MRICartesian", False)])
def test_a_robust_ei_run_from_before_the_weighted_sure_resumes_as_it_was_trained(tmp_path, physics, refused):
    # loss=rei before loss.terms.sure.preconditioner existed: plain SURE; auto weights it on CT only
    saved = {"physics": {"_target_": physics},
             "loss": {"terms": {"sure": {"_target_": "eqdeq_cli.losses.SURELoss", "weight": 1.0}}}}
    now = json.loads(json.dumps(saved))
    now["loss"]["terms"]["sure"]["preconditioner"] = "auto"
    if refused:
        with pytest.raises(ResumeRefused, match="add loss.terms.sure.preconditioner=none to the command"):
            check_same_experiment(saved, now, tmp_path / "last.pt", "auto")
    else:
        check_same_experiment(saved, now, tmp_path / "last.pt", "auto")
