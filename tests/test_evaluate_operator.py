"""Evaluating a checkpoint under another operator than it was trained with is said and recorded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CONFIG_DIR, TINY
from eqdeq_cli import cli
from eqdeq_cli.runs import train as run
from eqdeq_cli.runs.operator_record import describe_node, operator_changes

CT_TO_MRI = ("evaluating under another operator than the checkpoint was trained with "
             "(physics eqdeq_cli.physics.CTRadon -> eqdeq_cli.physics.MRICartesian); the results are for the operator "
             "given here, recorded as physics in {record}")


@pytest.fixture(scope="module")
def ct_run(cache_dir, tmp_path_factory) -> Path:
    """A one-step tiny CT run."""
    from hydra import compose, initialize_config_dir

    run_dir = tmp_path_factory.mktemp("ct")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(TINY))
    run.train(cfg, run_dir=run_dir)
    return run_dir


def _warnings(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line.split("[WARNING] ", 1)[1] for line in err.splitlines() if "[WARNING] " in line]


def test_eval_under_another_physics_warns_once_and_records_both(ct_run, tmp_path, capfd):
    assert cli.main(["eval", f"ckpt={ct_run}", "physics=mri", f"hydra.run.dir={tmp_path}"]) == 0
    assert _warnings(capfd.readouterr().err) == [CT_TO_MRI.format(record="metrics.json")]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["physics_as_trained"] is False
    assert metrics["physics"].startswith("eqdeq_cli.physics.MRICartesian(") and "acceleration=4" in metrics["physics"]
    n_views = torch.load(ct_run / "checkpoints" / "last.pt", weights_only=True)["config"]["physics"]["n_views"]
    assert metrics["physics_trained"].startswith("eqdeq_cli.physics.CTRadon(")
    assert f"n_views={n_views}," in metrics["physics_trained"]


def test_eval_with_a_changed_setting_names_it(ct_run, tmp_path, capfd):
    assert cli.main(["eval", f"ckpt={ct_run}", "physics.noise.sigma=0.05", f"hydra.run.dir={tmp_path}"]) == 0
    (warning,) = _warnings(capfd.readouterr().err)
    assert "(physics.noise.sigma 0.002 -> 0.05)" in warning
    assert "sigma=0.05" in json.loads((tmp_path / "metrics.json").read_text())["physics"]


def test_eval_under_the_trained_physics_is_silent_and_recorded(ct_run, tmp_path, capfd):
    assert cli.main(["eval", f"ckpt={ct_run}", "solver.eval.max_iter=2", f"hydra.run.dir={tmp_path}"]) == 0
    assert _warnings(capfd.readouterr().err) == []
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    saved = torch.load(ct_run / "checkpoints" / "last.pt", weights_only=True)["config"]["physics"]
    assert metrics["physics_as_trained"] is True and "physics_trained" not in metrics
    assert metrics["physics"] == describe_node(saved)


def test_eval_with_another_map_setting_says_the_model_is_not_the_trained_one(ct_run, tmp_path, capfd):
    assert cli.main(["eval", f"ckpt={ct_run}", "map.anchor=0.5", f"hydra.run.dir={tmp_path}"]) == 0
    assert _warnings(capfd.readouterr().err) == [
        "evaluating another model than the checkpoint was trained with (map.anchor: 0.0 → 0.5): the trained "
        "weights are used in it as given"]


def test_analyze_under_another_physics_warns_and_records(ct_run, tmp_path, capfd):
    quick = ["analysis.n_images=2", "analysis.n_elements=2", "analysis.n_probes=2", "analysis.power_iter=3",
             "analysis.identifiability_samples=2"]
    assert cli.main(["analyze", f"ckpt={ct_run}", *quick, "physics=mri", f"analysis.out={tmp_path}"]) == 0
    assert _warnings(capfd.readouterr().err) == [CT_TO_MRI.format(record="analysis.json")]
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["physics_as_trained"] is False and report["physics"].startswith("eqdeq_cli.physics.MRICartesian(")


def test_operator_changes_lists_each_setting():
    trained = {"_target_": "P", "a": 1, "noise": {"_target_": "N", "sigma": 0.1}}
    assert operator_changes(trained, trained) is None
    assert operator_changes(trained, {**trained, "_target_": "Q"}) == "physics P -> Q"
    used = {"_target_": "P", "b": "x", "noise": {"_target_": "N", "sigma": 0.2}}
    assert operator_changes(trained, used) == "physics.b (absent) -> 'x', physics.noise.sigma 0.1 -> 0.2, physics.a 1 -> (absent)"
    assert describe_node(used) == "P(b='x', noise=N(sigma=0.2))"
