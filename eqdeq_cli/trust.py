"""Which ``_target_``\\ s a config that eqdeq did not compose for this command may build.

``eqdeq eval``, ``eqdeq analyze`` and a resumed ``eqdeq train`` read the config saved in a
checkpoint. ``hydra.utils.instantiate`` calls whatever a ``_target_`` names, so a shared
checkpoint would choose the code that runs (``group: {_target_: builtins.open, _args_:
[<a file of yours>, w]}`` truncates that file). Every ``_target_`` of a saved config is
therefore checked against :class:`TrustedTargets` before anything is built:

* every ``_target_`` of the config tree shipped with eqdeq (``configs/``, without the
  user's ``configs/local/``), also under the name of its defining module
  (``eqdeq_cli.groups.rotations.Rotations`` for ``eqdeq_cli.groups.Rotations``);
  adding a component is adding a class and a YAML file, so the list follows the code;
* the optimizers of ``torch.optim`` (the ``trainer.optimizer`` node takes any of them);
* every ``_target_`` of the config the user composed for this command (command line,
  config tree, ``configs/local/``): the user chose them;
* what the user trusts explicitly: the ``trust`` key of that composed config (``[]`` in
  ``configs/common.yaml``), a list of dotted names, where ``package.*`` trusts everything
  under ``package``::

      eqdeq eval ckpt=run.pt 'trust=[mylab.physics.Blur, mylab.losses.*]'

  Trusting a name means: any checkpoint you load may call it with any arguments.

A ``trust`` saved inside a checkpoint (every run's saved config has one) is ignored: a
checkpoint cannot trust itself. Nothing a saved config names is imported before it is trusted.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from . import CONFIG_DIR
from .errors import CheckpointError

#: Top-level key of a composed config listing the targets the user trusts.
TRUST_KEY = "trust"
#: Folders of the config tree that hold the user's own settings, not eqdeq's.
USER_CONFIG_DIRS = ("local",)
_PACKAGE = __name__.split(".")[0]
_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class UntrustedTargetError(CheckpointError):
    """A saved config names a ``_target_`` that eqdeq does not build from saved configs."""


def config_targets(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(node path, target)`` for every ``_target_`` in a plain container, at any depth.

    Lists (``_args_``, loss terms) are entered too; the path of the top node is ``<root>``,
    list items are ``name[i]``.
    """
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield path or "<root>", node["_target_"]
        for key, value in node.items():
            yield from config_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from config_targets(value, f"{path}[{i}]")


@functools.cache
def shipped_targets() -> frozenset[str]:
    """Every ``_target_`` of the config tree shipped with eqdeq (``configs/local/`` left out)."""
    names: set[str] = set()
    for file in sorted(CONFIG_DIR.rglob("*.yaml")):
        if file.relative_to(CONFIG_DIR).parts[0] in USER_CONFIG_DIRS:
            continue
        names.update(t for _, t in config_targets(yaml.safe_load(file.read_text())) if isinstance(t, str))
    return frozenset(names)


@functools.cache
def _own_component_names() -> frozenset[str]:
    """The shipped eqdeq targets under the name of the module that defines each
    (``eqdeq_cli.groups.rotations.Rotations`` for ``eqdeq_cli.groups.Rotations``)."""
    from hydra._internal.utils import _locate

    names = set()
    for name in shipped_targets():
        if name.startswith(f"{_PACKAGE}."):
            try:
                obj = _locate(name)
            except ImportError:  # an optional dependency is missing: the shipped name still counts
                continue
            names.add(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}")
    return frozenset(names)


def _is_torch_optimizer(name: str) -> bool:
    module, _, cls = name.rpartition(".")
    obj = getattr(torch.optim, cls, None) if module == "torch.optim" else None
    return isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer


def trust_patterns(value: Any) -> tuple[str, ...]:
    """The ``trust`` setting as a tuple of dotted names (``pkg.Class``) or prefixes (``pkg.*``).

    Raises ``ValueError`` naming the bad entry when one is not a dotted name.
    """
    if value is None:
        return ()
    if isinstance(value, Mapping):
        raise ValueError(f"{TRUST_KEY} is a list of dotted names, not a mapping: {value!r}")
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        name = item[:-2] if isinstance(item, str) and item.endswith(".*") else item
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{TRUST_KEY}: {item!r} is not a dotted name; give names such as "
                             f"mylab.physics.Blur or mylab.physics.*")
    return tuple(items)


@dataclass(frozen=True)
class TrustedTargets:
    """The targets a saved config may build: eqdeq's own (see the module doc), ``names``
    and everything under the ``prefixes`` (each ending with ``.``)."""

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def for_command(cls, cfg: DictConfig | Mapping[str, Any]) -> "TrustedTargets":
        """What a command composed as ``cfg`` trusts: the targets ``cfg`` names itself and
        its ``trust`` list."""
        container = _plain(cfg)
        patterns = trust_patterns(container.get(TRUST_KEY))
        names = {t for _, t in config_targets(container) if isinstance(t, str)}
        names.update(p for p in patterns if not p.endswith(".*"))
        return cls(names=frozenset(names), prefixes=tuple(p[:-1] for p in patterns if p.endswith(".*")))

    def allows(self, target: Any) -> bool:
        if not isinstance(target, str):
            return False
        return (target in shipped_targets() or target in self.names or target.startswith(self.prefixes)
                or target in _own_component_names() or _is_torch_optimizer(target))


def check_saved_config(saved: Mapping[str, Any], trusted: TrustedTargets, source: str) -> None:
    """Refuse ``saved`` (a resolved plain config read back from ``source``) if any of its
    ``_target_``\\ s is not trusted; nothing is imported or built from it.

    Raises :class:`UntrustedTargetError`, one line naming each refused node and its target.
    """
    refused = [(path, target) for path, target in config_targets(saved) if not trusted.allows(target)]
    if refused:
        nodes = ", ".join(f"{path} -> {target!r}" for path, target in refused)
        names = ", ".join(sorted({str(t) for _, t in refused}))
        raise UntrustedTargetError(
            f"{source}: refused to build from its saved config: {nodes} "
            f"(eqdeq builds only its own components and torch.optim optimizers from a saved config; "
            f"if you trust this code, add {TRUST_KEY}=[{names}] to the command line or list it under "
            f"{TRUST_KEY}: in configs/local/default.yaml)")


def resolved_saved_config(saved: Mapping[str, Any] | DictConfig, source: str) -> dict[str, Any]:
    """``saved`` with its interpolations resolved, as plain containers: the exact values that
    are checked and then built (an interpolation could otherwise produce a ``_target_``).

    Raises :class:`~eqdeq_cli.errors.CheckpointError` when it does not resolve.
    """
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(saved) if not OmegaConf.is_config(saved) else saved,
                                          resolve=True)
    except Exception as exc:  # OmegaConf raises several types for bad interpolations
        raise CheckpointError(f"{source}: its saved config does not resolve ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(resolved, dict):
        raise CheckpointError(f"{source}: its saved config is not a mapping")
    return resolved


def _plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if not OmegaConf.is_config(cfg):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation this command never uses: its literal targets still count
        return OmegaConf.to_container(cfg, resolve=False)
