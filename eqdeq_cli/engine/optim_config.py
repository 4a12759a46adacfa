"""Checks of the ``trainer.optimizer`` and ``trainer.scheduler`` nodes, made when the
training settings are read: before any data, operator or model is built.

Both are ``_partial_`` nodes: ``_target_`` names a callable (a ``torch.optim`` optimizer,
a schedule of :mod:`eqdeq_cli.engine.schedules`), the other keys are its keyword options.
Without these checks a bad option surfaces only when the trainer builds the pair, after the
data and the model, and a value of the wrong type (``trainer.optimizer.lr=abc``) as a
traceback from inside torch. Whatever the target, each option is checked against the
target's signature:

* an option the target does not take is refused, with the list of those it takes;
* an option whose default is a number must be a finite real number, one whose default is a
  bool must be a bool, one whose default is a tuple of numbers a list of as many numbers;
* then the optimizer and its schedule are built once, on a one-element parameter. A
  ``ValueError`` or ``TypeError`` raised there is traced to the option that causes it (the
  one whose default value makes the error go away) and reported under that option's key.

Every error is a ``ValueError`` (or ``KeyError`` for an unknown option) whose message names
the full key, e.g. ``trainer.optimizer.lr``.

The trainer builds both with :func:`build_optimizer` and :func:`build_scheduler`, from plain
Python values (``_convert_="all"``): an option given as a config list (``betas=[0.9, 0.99]``)
would otherwise stay an OmegaConf ``ListConfig`` inside the optimizer's ``param_groups``, and
so inside every checkpoint, which ``torch.load(weights_only=True)`` then refuses to read.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping

import torch
from hydra._internal.utils import _locate
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..utils.checks import is_finite_real

#: Arguments the trainer passes itself: the parameters to the optimizer, the optimizer and
#: ``trainer.max_steps`` to the schedule (see :class:`eqdeq_cli.engine.trainer.Trainer`).
_SUPPLIED = {"optimizer": ("params",), "scheduler": ("optimizer", "max_steps")}


class _Node:
    """One partial node: where it is, its target, the target's signature and its options."""

    def __init__(self, node: DictConfig | Mapping[str, Any], where: str) -> None:
        data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        self.where = where
        self.target = str(data.get("_target_", ""))
        if not self.target:
            raise ValueError(f"{where} has no _target_; see configs/{where.replace('.', '/')}/")
        try:
            self.fn: Callable[..., Any] = _locate(self.target)
        except Exception:  # ImportError, or ValueError for a malformed path
            example = "torch.optim.AdamW" if where.endswith("optimizer") else "eqdeq_cli.engine.schedules.constant"
            raise ValueError(f"{where}._target_={self.target!r} cannot be imported; give the dotted path of a "
                             f"class or function, e.g. {example}") from None
        if not callable(self.fn):
            raise ValueError(f"{where}._target_={self.target!r} is not a class or function")
        self.options = {k: v for k, v in data.items() if not str(k).startswith("_")}
        self.params = inspect.signature(self.fn).parameters
        self.supplied = _SUPPLIED[where.rsplit(".", 1)[-1]]

    def default(self, key: str) -> Any:
        param = self.params.get(key)
        return inspect.Parameter.empty if param is None else param.default

    def check_keys(self) -> None:
        for key in self.options:
            if key in self.supplied:
                raise KeyError(f"{self.where}.{key} is set by the trainer, not by the config; remove it")
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self.params.values())
        valid = sorted(k for k, p in self.params.items()
                       if k not in self.supplied and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        unknown = [k for k in self.options if k not in self.params]
        if unknown and not takes_any:
            raise KeyError(f"unknown key {self.where}.{unknown[0]} for {self.target}; valid keys: {', '.join(valid)}")

    def check_types(self) -> None:
        for key, value in self.options.items():
            default = self.default(key)
            name = f"{self.where}.{key}"
            hint = f"{self.target}'s default is {_show(default)}"
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be true or false ({hint}), got {value!r}")
            elif isinstance(default, (int, float)):
                if not is_finite_real(value):
                    raise ValueError(f"{name} must be a finite real number ({hint}), got {value!r}")
            elif isinstance(default, tuple) and default and all(is_finite_real(d) for d in default):
                if not (isinstance(value, (list, tuple)) and len(value) == len(default)
                        and all(is_finite_real(v) for v in value)):
                    raise ValueError(f"{name} must be a list of {len(default)} finite real numbers "
                                     f"({hint}), got {value!r}")

    def blame(self, exc: Exception, build: Callable[[dict[str, Any]], object]) -> ValueError:
        """The error to report for ``exc``, raised by ``build(self.options)``: under the key of
        the one option whose default value makes ``build`` succeed, else under the node."""
        for key, value in self.options.items():
            default = self.default(key)
            if default is inspect.Parameter.empty:
                continue
            try:
                build({**self.options, key: default})
            except (ValueError, TypeError):
                continue
            if str(exc).startswith(f"{key} "):  # the target already names the option
                return ValueError(f"{self.where}.{exc}")
            return ValueError(f"{self.where}.{key}={_show(value)} is refused by {self.target} ({exc}); "
                              f"its default is {_show(default)}")
        return ValueError(f"{self.where} ({self.target} with {self.options}) cannot be built: {exc}")


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def check_optimizer_and_scheduler(optimizer: DictConfig | Mapping[str, Any],
                                  scheduler: DictConfig | Mapping[str, Any], *, max_steps: int) -> None:
    """Check the ``trainer.optimizer`` and ``trainer.scheduler`` nodes (see the module notes)
    by building them once on a one-element parameter; ``max_steps`` is passed to the schedule.

    Raises ``KeyError`` for an option the target does not take (or one the trainer sets
    itself) and ``ValueError`` for a value of the wrong type or one the target refuses,
    naming the option's key (``trainer.optimizer.lr``) and the target's default.
    """
    opt = _Node(optimizer, "trainer.optimizer")
    sched = _Node(scheduler, "trainer.scheduler")
    for node in (opt, sched):
        node.check_keys()
        node.check_types()

    def build_optimizer(options: dict[str, Any]) -> torch.optim.Optimizer:
        return opt.fn([torch.nn.Parameter(torch.zeros(1))], **options)

    try:
        built = build_optimizer(opt.options)
    except (ValueError, TypeError) as exc:
        raise opt.blame(exc, build_optimizer) from None

    def build_schedule(options: dict[str, Any]) -> object:
        return sched.fn(built, max_steps=max_steps, **options)

    try:
        build_schedule(sched.options)
    except (ValueError, TypeError) as exc:
        raise sched.blame(exc, build_schedule) from None


def build_optimizer(node: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``node`` (a ``_partial_`` optimizer config) called with ``params``."""
    return instantiate(node, _convert_="all")(params)


def build_scheduler(node: Any, optimizer: torch.optim.Optimizer, max_steps: int) -> Any:
    """``node`` (a ``_partial_`` schedule config) called as ``factory(optimizer, max_steps=max_steps)``."""
    return instantiate(node, _convert_="all")(optimizer, max_steps=max_steps)
