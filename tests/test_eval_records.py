"""What ``eqdeq eval`` records and where: the config evaluated, and never over another command's run."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from eqdeq_cli import cli


@pytest.fixture(scope="module")
def run_32px(tmp_path_factory, cache_dir):
    """A one-step training run on 32-pixel images (the eval config's default is 64)."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    assert cli.main(["train", *TINY, "data.img_size=32", f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_eval_into_a_training_run_is_refused_and_writes_nothing_there(run_32px, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(run_32px, run)
    before = _files(run)
    assert cli.main(["eval", f"ckpt={run}", "split=val", f"hydra.run.dir={run}"]) == 1
    err = capfd.readouterr().err
    assert (f"{run} holds an eqdeq train run, whose results eqdeq eval would overwrite: leave hydra.run.dir out "
            "(eqdeq eval writes to outputs/eval/<date>_<time> by default) or choose a new directory") in err
    assert "Traceback" not in err
    after = _files(run)
    assert set(after) - set(before) == {"eval.log"}  # Hydra opens the command's log before it runs
    assert {name: after[name] for name in before} == before


def test_a_directory_with_checkpoints_and_no_status_is_a_training_run(run_32px, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(run_32px, run)
    (run / "status.json").unlink()  # a run of a version that wrote none
    assert cli.main(["eval", f"ckpt={run}", f"hydra.run.dir={run}"]) == 1
    assert f"{run} holds an eqdeq train run" in capfd.readouterr().err
    assert not (run / "status.json").exists()


def test_an_older_training_run_without_status_and_checkpoints_is_a_training_run(run_32px, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(run_32px, run)
    (run / "status.json").unlink()
    shutil.rmtree(run / "checkpoints")  # removed to save disk: the results and .hydra/ remain
    before = _files(run)
    assert cli.main(["eval", f"ckpt={run_32px}", f"hydra.run.dir={run}"]) == 1
    assert f"{run} holds an eqdeq train run" in capfd.readouterr().err
    assert {name: data for name, data in _files(run).items() if name != "eval.log"} == before


def test_train_into_an_evaluation_directory_is_refused(run_32px, tmp_path, capfd):
    out = tmp_path / "eval"
    assert cli.main(["eval", f"ckpt={run_32px}", f"hydra.run.dir={out}"]) == 0
    before = _files(out)
    assert cli.main(["train", *TINY, f"hydra.run.dir={out}"]) == 1
    assert (f"{out} holds an eqdeq eval run, whose results eqdeq train would overwrite: leave hydra.run.dir "
            "out (eqdeq train writes to outputs/train/<date>_<time> by default)") in capfd.readouterr().err
    assert {name: data for name, data in _files(out).items() if name in before} == before
    assert not (out / "checkpoints").exists()


def test_eval_records_the_config_it_evaluated(run_32px, tmp_path):
    """``.hydra/config.yaml`` is the checkpoint's config with the overrides (what ``eqdeq collect``
    reads), with the command's keys; the composed eval config is ``.hydra/command.yaml``."""
    out = tmp_path / "eval"
    assert cli.main(["eval", f"ckpt={run_32px}", "split=val", "solver.eval.max_iter=2",
                     f"hydra.run.dir={out}"]) == 0
    config = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    assert config["data"]["img_size"] == 32 and config["data"]["n_train"] == 4
    assert config["solver"]["eval"]["max_iter"] == 2
    assert (config["task"], config["ckpt"], config["split"]) == ("eval", str(run_32px), "val")
    command = yaml.safe_load((out / ".hydra" / "command.yaml").read_text())
    assert command["task"] == "eval" and command["data"]["img_size"] != 32
    assert yaml.safe_load((out / ".hydra" / "overrides.yaml").read_text())[-1] == "solver.eval.max_iter=2"


def test_an_evaluation_with_other_overrides_does_not_replace_another(run_32px, tmp_path, capfd):
    out = tmp_path / "eval"
    assert cli.main(["eval", f"ckpt={run_32px}", f"hydra.run.dir={out}"]) == 0
    before = _files(out)
    assert cli.main(["eval", f"ckpt={run_32px}", "split=val", f"hydra.run.dir={out}"]) == 1
    assert (f"{out} holds another eqdeq eval run (ckpt={run_32px}), whose results this one would replace: "
            "leave hydra.run.dir out or choose a new directory") in capfd.readouterr().err
    assert {name: data for name, data in _files(out).items() if name != "eval.log"} == \
        {name: data for name, data in before.items() if name != "eval.log"}
    assert cli.main(["eval", f"ckpt={run_32px}", f"hydra.run.dir={out}"]) == 0  # the same evaluation again
