"""A checkpoint from someone else cannot make eqdeq run code or touch files (:mod:`eqdeq_cli.trust`).

Every foreign ``_target_`` below is ``builtins.open(<scratch file>, "w")``: had anything
built it, the scratch file outside the run directory would be empty.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import CONFIG_DIR, TINY
from eqdeq_cli import cli
from eqdeq_cli.engine.checkpoint import save_checkpoint
from eqdeq_cli.runs import train as run
from eqdeq_cli.runs.restore import restore_run
from eqdeq_cli.trust import TrustedTargets, UntrustedTargetError, shipped_targets

#: Every node of a run's config that is instantiated, and the nested ones.
NODES = ("data", "physics", "physics.noise", "group", "model", "map", "solver.forward", "solver.backward",
         "solver.eval", "grad", "loss", "loss.terms.mc", "loss.terms.ei", "trainer.optimizer",
         "trainer.scheduler")
PRECIOUS = "the user's file\n"
#: Small analysis budgets.
QUICK = ["analysis.n_images=1", "analysis.n_elements=1", "analysis.n_probes=1", "analysis.power_iter=2",
         "analysis.identifiability_samples=0"]
SGD = "trainer.optimizer._target_=torch.optim.SGD"


@pytest.fixture(scope="module")
def own_run(cache_dir, tmp_path_factory) -> Path:
    """A one-step tiny run of eqdeq's own, trained with an optimizer the config tree does not
    ship (the default config's checkpoints are loaded by the eval and analyze tests)."""
    from hydra import compose, initialize_config_dir

    run_dir = tmp_path_factory.mktemp("own")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, SGD])
    run.train(cfg, run_dir=run_dir)
    return run_dir


def _payload(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def _node(config: dict, path: str) -> dict:
    for key in path.split("."):
        config = config[key]
    return config


def _foreign_run(own: Path, dest: Path, scratch: Path, nodes=NODES, **extra) -> Path:
    """A copy of ``own`` whose checkpoint names ``builtins.open(scratch, "w")`` in each of ``nodes``."""
    shutil.copytree(own, dest)
    payload = _payload(own)
    config = copy.deepcopy(payload["config"])
    for node in nodes:
        _node(config, node).update({"_target_": "builtins.open", "_args_": [str(scratch), "w"]})
    config.update(extra)
    payload["config"] = config
    save_checkpoint(dest / "checkpoints" / "last.pt", payload)
    (dest / "checkpoints" / "best.pt").unlink(missing_ok=True)
    return dest


def _snapshot(root: Path, allowed: tuple[Path, ...]) -> dict[str, str]:
    """``{path: content hash}`` of every file under ``root`` outside the ``allowed`` directories."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not any(p.is_relative_to(a) for a in allowed)}


@pytest.fixture
def scratch(tmp_path) -> Path:
    path = tmp_path / "scratch.txt"
    path.write_text(PRECIOUS)
    return path


def _eval_cfg(compose_cfg, *overrides: str):
    return compose_cfg(["ckpt=unused", *overrides], config_name="eval")


# -- each instantiated node is checked ------------------------------------------------------
@pytest.mark.parametrize("node", NODES)
def test_a_foreign_target_in_any_node_is_refused_before_anything_is_built(node, own_run, tmp_path, scratch,
                                                                        compose_cfg):
    bad = _foreign_run(own_run, tmp_path / "bad", scratch, nodes=(node,))
    with pytest.raises(UntrustedTargetError) as info:
        restore_run(bad, _eval_cfg(compose_cfg), [], "test")
    message = str(info.value)
    assert f"{node} -> 'builtins.open'" in message and "\n" not in message
    assert scratch.read_text() == PRECIOUS


@pytest.mark.parametrize("hidden", [
    {"group": {"_target_": "eqdeq_cli.groups.Rotations",
               "_args_": [{"_target_": "builtins.open", "_args_": ["SCRATCH", "w"]}]}},
    {"group": {"_target_": "${evil}", "_args_": ["SCRATCH", "w"]}, "evil": "builtins.open"},
    {"group": {"_target_": "eqdeq_cli.groups.Rotations",
               "max_angle": {"_target_": "builtins.open", "_partial_": True, "_args_": ["SCRATCH", "w"]}}},
], ids=["in _args_", "through an interpolation", "a _partial_ argument"])
def test_targets_hidden_in_arguments_or_interpolations_are_found(hidden, own_run, tmp_path, scratch, compose_cfg):
    extra = json.loads(json.dumps(hidden).replace("SCRATCH", str(scratch)))
    bad = _foreign_run(own_run, tmp_path / "bad", scratch, nodes=(), **extra)
    with pytest.raises(UntrustedTargetError, match="builtins.open"):
        restore_run(bad, _eval_cfg(compose_cfg), [], "test")
    assert scratch.read_text() == PRECIOUS


def test_eqdeq_code_that_is_not_a_component_is_refused(own_run, tmp_path, scratch, compose_cfg):
    bad = _foreign_run(own_run, tmp_path / "bad", scratch, nodes=())
    payload = _payload(bad)
    payload["config"]["group"] = {"_target_": "eqdeq_cli.utils.files.write_json",
                                  "_args_": [str(scratch), {"owned": True}]}
    save_checkpoint(bad / "checkpoints" / "last.pt", payload)
    with pytest.raises(UntrustedTargetError, match=r"group -> 'eqdeq_cli\.utils\.files\.write_json'"):
        restore_run(bad, _eval_cfg(compose_cfg), [], "test")
    assert scratch.read_text() == PRECIOUS


# -- every command that reads a checkpoint --------------------------------------------------
COMMANDS = {
    "eval": lambda bad, out: ["eval", f"ckpt={bad}", f"hydra.run.dir={out}"],
    "analyze": lambda bad, out: ["analyze", f"ckpt={bad / 'checkpoints' / 'last.pt'}", *QUICK],
    "analyze sweep": lambda bad, out: ["analyze", f"sweep={bad.parent}", *QUICK],
    "train resume=auto": lambda bad, out: ["train", *TINY, f"hydra.run.dir={bad}"],
    "train resume=PATH": lambda bad, out: ["train", *TINY, f"resume={bad}", f"hydra.run.dir={out}"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_foreign_checkpoint_in_one_line(command, own_run, tmp_path, scratch, capsys):
    sweep = tmp_path / "sweep"
    bad = _foreign_run(own_run, sweep / "0", scratch)
    out = tmp_path / "out"
    before = _snapshot(tmp_path, allowed=(sweep, out))
    assert cli.main(COMMANDS[command](bad, out)) == 1
    err = capsys.readouterr().err
    refusals = [line for line in err.splitlines() if "refused to build" in line]
    assert refusals and "Traceback" not in err, err
    assert all(f"{node} -> 'builtins.open'" in refusals[-1] for node in NODES), refusals[-1]
    assert scratch.read_text() == PRECIOUS
    assert _snapshot(tmp_path, allowed=(sweep, out)) == before


# -- the project's own checkpoints ------------------------------------------------------------
def test_every_shipped_target_is_trusted():
    trusted = TrustedTargets()
    assert "eqdeq_cli.groups.Rotations" in shipped_targets() and "torch.optim.AdamW" in shipped_targets()
    assert all(trusted.allows(t) for t in shipped_targets())
    assert trusted.allows("eqdeq_cli.groups.rotations.Rotations")  # the defining module's name
    assert trusted.allows("torch.optim.SGD") and trusted.allows("torch.optim.RMSprop")
    assert not any(trusted.allows(t) for t in ("builtins.open", "torch.optim.Optimizer", "torch.load",
                                               "eqdeq_cli.cli.main", "os.system", None, 3))


def test_own_checkpoints_still_evaluate_and_analyze(own_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(own_run, run_dir)
    assert cli.main(["eval", f"ckpt={run_dir}", f"hydra.run.dir={tmp_path / 'eval'}"]) == 0
    assert "psnr" in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert cli.main(["analyze", f"ckpt={run_dir}", *QUICK]) == 0
    assert (run_dir / "analysis.json").is_file()


def test_a_run_with_another_optimizer_resumes(own_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(own_run, run_dir)
    assert cli.main(["train", *TINY, SGD, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2


# -- what the user trusts -------------------------------------------------------------------
def _namespace_group(own_run: Path, dest: Path, **extra) -> Path:
    """A run whose group is built by ``types.SimpleNamespace`` (harmless; eval does not use the group)."""
    shutil.copytree(own_run, dest)
    payload = _payload(own_run)
    payload["config"]["group"] = {"_target_": "types.SimpleNamespace", "name": "mine"}
    payload["config"].update(extra)
    save_checkpoint(dest / "checkpoints" / "last.pt", payload)
    return dest


@pytest.mark.parametrize("trust", ["trust=[types.SimpleNamespace]", "trust=[types.*]",
                                   "group._target_=types.SimpleNamespace"],
                         ids=["a name", "a package", "named by the user's own config"])
def test_what_the_user_trusts_is_built(trust, own_run, tmp_path, capsys):
    ckpt = _namespace_group(own_run, tmp_path / "run")
    assert cli.main(["eval", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'refused'}"]) == 1
    assert "group -> 'types.SimpleNamespace'" in capsys.readouterr().err
    assert cli.main(["eval", f"ckpt={ckpt}", trust, f"hydra.run.dir={tmp_path / 'eval'}"]) == 0


def test_the_refusal_names_the_override_that_trusts_the_target(own_run, tmp_path, capsys):
    ckpt = _namespace_group(own_run, tmp_path / "run")
    assert cli.main(["eval", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'refused'}"]) == 1
    advice = re.search(r"add (\S+) to the command line", capsys.readouterr().err)
    assert advice and advice.group(1) == "trust=[types.SimpleNamespace]"
    assert cli.main(["eval", f"ckpt={ckpt}", advice.group(1), f"hydra.run.dir={tmp_path / 'eval'}"]) == 0


@pytest.mark.parametrize("config_name", ["train", "eval", "analyze"])
def test_every_command_has_a_trust_list_that_the_command_line_sets(config_name, compose_cfg):
    assert list(compose_cfg([], config_name=config_name).trust) == []
    assert list(compose_cfg(["trust=[types.*]"], config_name=config_name).trust) == ["types.*"]


def test_a_run_saves_its_trust_list(own_run):
    assert _payload(own_run)["config"]["trust"] == []


SELF_TRUSTING = {
    "eval": lambda ckpt, out: ["eval", f"ckpt={ckpt}", f"hydra.run.dir={out}"],
    "analyze": lambda ckpt, out: ["analyze", f"ckpt={ckpt}", *QUICK],
    "train resume=PATH": lambda ckpt, out: ["train", *TINY, f"resume={ckpt}", f"hydra.run.dir={out}"],
}


@pytest.mark.parametrize("command", SELF_TRUSTING)
def test_a_checkpoint_cannot_trust_itself(command, own_run, tmp_path, capsys):
    """Every run saves the ``trust`` of the config it was trained with; loading it must not
    widen what the loading user trusts, even with that user's own ``trust`` set."""
    ckpt = _namespace_group(own_run, tmp_path / "run", trust=["types.SimpleNamespace", "types.*", "builtins.*"])
    assert cli.main(SELF_TRUSTING[command](ckpt, tmp_path / "out")) == 1
    assert "group -> 'types.SimpleNamespace'" in capsys.readouterr().err
    assert cli.main([*SELF_TRUSTING[command](ckpt, tmp_path / "out2"), "trust=[mylab.*]"]) == 1
    assert "group -> 'types.SimpleNamespace'" in capsys.readouterr().err


def test_a_trust_entry_that_is_not_a_dotted_name_is_refused(own_run, tmp_path, capsys):
    code = cli.main(["eval", f"ckpt={own_run}", "trust=[*]", f"hydra.run.dir={tmp_path / 'eval'}"])
    assert code == 1
    assert "trust: '*' is not a dotted name" in capsys.readouterr().err
