"""A trained run, rebuilt from its checkpoint, and the measurement sets of a run.

Used by ``eqdeq eval`` and ``eqdeq analyze``: the config saved in the checkpoint is the
run's; the command line's overrides replace the matching parts of it. The result is built
only if every ``_target_`` in it is trusted (:mod:`eqdeq_cli.trust`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
import torch

from ..components import Components, build_components
from ..engine.checkpoint import load_checkpoint, load_model_state, resolve_checkpoint_path
from ..engine.measurements import simulate_measurements
from ..engine.rng import seed_everything
from ..errors import CheckpointError
from ..trust import TRUST_KEY, TrustedTargets, check_saved_config, resolved_saved_config
from .resume import with_former_turns

log = logging.getLogger(__name__)

#: Keys of ``eval.yaml`` / ``analyze.yaml`` that belong to the command, not to the trained run.
COMMAND_KEYS = ("task", "ckpt", "sweep", "split", "resume", "analysis", TRUST_KEY)
SPLITS = ("train", "val", "test")
_ABSENT = object()


def measurement_sets(cfg: DictConfig, components: Components, splits: Sequence[str]) -> dict[str, Any]:
    """The run's fixed measurement sets ``{split: dataset of {"y"} or {"x", "y"}}``, simulated
    from the split's images with the seeds of ``cfg.measurement_seeds``."""
    seeds = cfg.measurement_seeds
    return {split: simulate_measurements(components.data.split(split), components.physics,
                                         seed=int(seeds[split]), split=split) for split in splits}


def merge_saved_config(saved: dict[str, Any], cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The checkpoint's config, with the command line's ``overrides`` applied on top.

    For each override ``key=value`` (or group choice ``physics=mri``) the value is taken
    from the freshly composed ``cfg``, so group options and interpolations behave as in
    training. Hydra's own keys and the command's keys (:data:`COMMAND_KEYS`) are skipped.
    """
    run_cfg = OmegaConf.create(saved)
    for ov in OverridesParser.create().parse_overrides(list(overrides)):
        key = ov.key_or_group
        if key.startswith("hydra") or key.split(".", 1)[0] in COMMAND_KEYS or ov.is_delete():
            continue
        path = key.replace("/", ".")
        node = OmegaConf.select(cfg, path, default=_ABSENT, throw_on_missing=False)
        if node is _ABSENT:
            log.warning("override %s has no counterpart in the run's config; ignored", ov.input_line)
            continue
        value = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
        OmegaConf.update(run_cfg, path, value, merge=False, force_add=True)
    return run_cfg


def restore_run(ckpt: str | Path, cfg: DictConfig, overrides: Sequence[str],
                split: str) -> tuple[DictConfig, Components, dict[str, Any]]:
    """Rebuild a trained run from its checkpoint, for evaluation or analysis of ``split``.

    Returns ``(run_cfg, components, payload)``: the config saved in the checkpoint with
    ``overrides`` applied from ``cfg``, the components built from it (seeded as the run
    was) with the checkpoint's weights loaded, in the memory layout the run trained in
    (``trainer.channels_last``), and the checkpoint itself. An exact rotation group saved
    without ``turns`` (before the key existed) draws the quarter turns it trained with
    (:func:`~eqdeq_cli.runs.resume.with_former_turns`). Raises
    ``ValueError`` for an unknown split and :class:`~eqdeq_cli.errors.CheckpointError`
    for a missing, unreadable or mismatched checkpoint, or
    :class:`~eqdeq_cli.trust.UntrustedTargetError` before anything is built when the
    config names a ``_target_`` that ``cfg`` does not trust.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; valid: {', '.join(SPLITS)}")
    trusted = TrustedTargets.for_command(cfg)
    payload = load_checkpoint(ckpt)
    source = str(resolve_checkpoint_path(ckpt))
    resolved = with_former_turns(resolved_saved_config(merge_saved_config(payload["config"], cfg, overrides), source))
    check_saved_config(resolved, trusted, source)
    run_cfg = OmegaConf.create(resolved)
    OmegaConf.set_struct(run_cfg, True)
    seed_everything(int(run_cfg.seed))
    comps = build_components(run_cfg)
    try:
        load_model_state(comps.deq, payload["model"])
    except ValueError as exc:
        raise CheckpointError(f"{ckpt}: {exc}") from exc
    if OmegaConf.select(run_cfg, "trainer.channels_last", default=False):
        # the layout training evaluated with, so the numbers are the run's own to the last bit
        comps.denoiser.to(memory_format=torch.channels_last)
    return run_cfg, comps, payload
