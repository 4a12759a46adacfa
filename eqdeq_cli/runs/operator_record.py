"""The operator a checkpoint is evaluated under, compared with the one it was trained with.

``eqdeq eval ckpt=RUN physics=mri`` (or ``physics.noise.sigma=0.05``) is allowed: testing
a model outside the operator it learnt is a real experiment. It must not pass unnoticed,
though: :func:`operator_record` says what changed, for a warning and for ``metrics.json``.
"""
from __future__ import annotations

from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf


def describe_node(node: Any) -> str:
    """A one-line description of a config node: ``eqdeq_cli.physics.CTRadon(img_size=32,
    n_views=50, noise=eqdeq_cli.physics.GaussianNoise(sigma=0.002))``; a node without
    ``_target_`` is written as ``(key=value, ...)``, any other value as its ``repr``."""
    if not isinstance(node, Mapping):
        return repr(node)
    inner = ", ".join(f"{k}={describe_node(v)}" for k, v in node.items() if k != "_target_")
    return f"{node.get('_target_', '')}({inner})"


def operator_changes(trained: Mapping[str, Any], used: Mapping[str, Any]) -> str | None:
    """What differs between the ``physics`` node a checkpoint was trained with and the one
    used now, in one line (``None`` when nothing does): the class when it changed, else
    each setting as ``physics.key old -> new`` (``(absent)`` for a key one side lacks)."""
    from .resume import ABSENT, setting_differences

    found = setting_differences(trained, used, "physics")
    for key, old, new in found:
        if key == "physics._target_":
            return f"physics {old} -> {new}"

    def show(value: Any) -> str:
        return "(absent)" if value is ABSENT else repr(value)

    return ", ".join(f"{key} {show(old)} -> {show(new)}" for key, old, new in found) or None


def operator_record(saved_config: Mapping[str, Any], run_cfg: DictConfig,
                    record: str = "metrics.json") -> tuple[dict[str, Any], str | None]:
    """``(fields, warning)`` for the evaluation of a checkpoint whose saved config is
    ``saved_config`` under ``run_cfg``: ``fields`` holds ``physics`` (the operator used, see
    :func:`describe_node`), ``physics_as_trained`` and, when it differs, ``physics_trained``;
    ``warning`` is the one-line warning to log (naming ``record``, the file the fields go
    to), ``None`` when the operator is the trained one.
    A checkpoint without a saved ``physics`` node is taken as trained with the one used."""
    used = OmegaConf.to_container(run_cfg.physics, resolve=True)
    trained = saved_config.get("physics", used)
    changes = operator_changes(trained, used)
    fields: dict[str, Any] = {"physics": describe_node(used), "physics_as_trained": changes is None}
    if changes is None:
        return fields, None
    fields["physics_trained"] = describe_node(trained)
    warning = (f"evaluating under another operator than the checkpoint was trained with ({changes}); "
               f"the results are for the operator given here, recorded as physics in {record}")
    return fields, warning


def model_change_warning(saved_config: Mapping[str, Any], run_cfg: DictConfig) -> str | None:
    """The one-line warning for evaluating a checkpoint with another map or denoiser
    configuration than it was trained with (``eqdeq eval ckpt=RUN map.anchor=0``): the
    weights load, but the model is not the trained one. ``None`` when ``map`` and ``model``
    match (keys added after the checkpoint was written count as matching at their former
    value, as for resuming)."""
    from .resume import config_differences

    used = {key: OmegaConf.to_container(run_cfg[key], resolve=True)
            for key in ("map", "model") if key in run_cfg}
    trained = {key: saved_config[key] for key in used if key in saved_config}
    changes = config_differences(trained, {key: used[key] for key in trained})
    if not changes:
        return None
    return (f"evaluating another model than the checkpoint was trained with ({'; '.join(changes)}): "
            f"the trained weights are used in it as given")

