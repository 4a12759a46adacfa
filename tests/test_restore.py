"""A trained run rebuilt from its checkpoint (eqdeq eval, eqdeq analyze) is the run it trained."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY
from eqdeq_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from eqdeq_cli.runs import train as run
from eqdeq_cli.runs.restore import restore_run


@pytest.fixture(scope="module")
def run_before_turns(cache_dir, tmp_path_factory) -> Path:
    """A one-step tiny CT run with exact rotations whose checkpoint's config has no ``group.turns``,
    as those written before the key existed."""
    from hydra import compose, initialize_config_dir

    from conftest import CONFIG_DIR

    run_dir = tmp_path_factory.mktemp("before_turns")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(TINY))
    run.train(cfg, run_dir=run_dir)
    payload = load_checkpoint(run_dir)
    assert payload["config"]["group"]["exact"] is True and payload["config"]["group"].pop("turns") is None
    return save_checkpoint(run_dir / "checkpoints" / "last.pt", payload)


@pytest.mark.parametrize("overrides, drawn", [
    ([], [0, 1, 2, 3]),  # the draw of exact rotations before group.turns existed
    (["group.max_angle=90"], [0, 1, 3]),  # as those versions read max_angle
    (["group.turns=[1,3]"], [1, 3]),  # the command line still chooses
    (["group.exact=false"], None),  # continuous angles take no turns
])
def test_a_run_from_before_group_turns_is_rebuilt_with_the_turns_it_drew(run_before_turns, compose_cfg, overrides,
                                                                          drawn):
    cfg = compose_cfg([f"ckpt={run_before_turns}", *overrides], config_name="eval")
    run_cfg, comps, _ = restore_run(run_before_turns, cfg, overrides, "test")
    assert comps.group.turns == (None if drawn is None else tuple(drawn))
    assert OmegaConf.to_container(run_cfg.group).get("turns") == drawn
