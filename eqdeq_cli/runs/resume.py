"""Where a training run continues from, and whether it may continue from there.

``resume`` of ``configs/train.yaml``:

* ``auto``: the run directory's own checkpoint, ``checkpoints/last.pt``. When that file cannot
  be read (truncated by a full disk or a copy cut short), the readable checkpoint of the
  directory with the most steps (``best.pt``, which may be older) is used instead, with a
  warning naming the bad file; the run then retrains the steps in between, exactly as it
  trained them the first time. No checkpoint: a new run; but a directory holding a finished
  run's results without its checkpoints (``checkpoints/`` removed to save disk) is trained
  again only for the same experiment, with a warning, and refused for any other
  (:func:`check_rerun_without_checkpoint`), so that results are never replaced unnoticed.
* ``never``: a new run; refused in a directory that already holds one.
* a path (a ``.pt`` file or a run directory): where a *new* run starts. Once the run
  directory has a checkpoint of its own, that one wins, so rerunning the same command (a
  SLURM requeue) continues the run rather than starting it again from the path.

A checkpoint is resumed only if it belongs to the same experiment
(:func:`check_same_experiment`): every config key but :data:`RESUMABLE_KEYS` must be as it
was saved in the checkpoint. A run never resumes with ``trainer.max_steps`` below its
checkpoint's step (:func:`check_run_length`): that would report a model of more steps than
its config says.
"""
from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping

from ..engine.checkpoint import load_checkpoint, resolve_checkpoint_path
from ..errors import CheckpointError, UserError
from ..groups.rotations import drawn_turns
from ..physics.base import resolve_preconditioner
from .status import read_status

log = logging.getLogger(__name__)

RESUME_CHOICES = ("auto", "never")

#: Config keys (and their subtrees) that may differ from the checkpoint's when a run is resumed:
#: how long it trains (``max_steps``, the time cap), where and how it runs (device,
#: compilation, memory layout), how often it logs, validates and checkpoints, how evaluation
#: is batched and how many images it saves, where data is cached, and the command's own keys.
#: Every other key defines the experiment (data, physics, group, model, map, solvers, gradient
#: mode, loss, optimizer, schedule, batch size, seeds, precision, monitored metric) and must match.
RESUMABLE_KEYS: tuple[str, ...] = (
    "task", "resume", "trust",
    "trainer.max_steps", "trainer.max_minutes", "trainer.max_bad_steps",
    "trainer.device", "trainer.compile", "trainer.channels_last", "trainer.progress", "trainer.tensorboard",
    "trainer.log_every", "trainer.eval_every", "trainer.checkpoint_every",
    "trainer.contraction_every", "trainer.contraction_iters",
    "evaluation.batch_size", "evaluation.n_images", "data.cache_dir",
)

#: Config keys added after checkpoints were first written, with the value that gives the model
#: and training those checkpoints had. A checkpoint whose config lacks such a key matches a
#: config holding that value (so runs of an earlier version still resume); any other value is
#: a different experiment.
ADDED_KEYS: dict[str, Any] = {
    "map.anchor": 0.0,
    "grad.sample_cache": 0,
    "grad.closed_form_vjp": True,
    "group.interpolation": "bilinear",
    "map.preconditioner": "none",
    "loss.terms.mc.preconditioner": "none",
    "loss.terms.sure.preconditioner": "none",
    "data.kind": "ellipses",
    "trainer.forward_tol_start": None,
    "trainer.forward_tol_ramp": 0.5,
    "group.identity": True,
    "map.clip": None,
}
#: Keys of :data:`ADDED_KEYS` that only nodes of one class have (the parent node's ``_target_``).
ADDED_KEY_CLASSES: dict[str, str] = {"data.kind": "eqdeq_cli.data.PhantomData",
                                     "group.identity": "eqdeq_cli.groups.Reflections"}

CHECKPOINTS = "checkpoints"
LAST = "last.pt"
#: The files that make a directory hold a run (``resume=never`` refuses it).
RUN_FILES = (f"{CHECKPOINTS}/{LAST}", "metrics.json")


class ResumeRefused(UserError):
    """The run directory holds a run that this command may not continue (or overwrite)."""


def check_resume_value(resume: str) -> None:
    """Raises ``ValueError`` unless ``resume`` is ``auto``, ``never`` or an existing path."""
    if resume not in RESUME_CHOICES and not Path(resume).expanduser().exists():
        raise ValueError(f"resume={resume!r}: use auto, never, or the path of a checkpoint or run directory")


def resume_checkpoint(resume: str, run_dir: Path, device: Any = "cpu", config: Mapping[str, Any] | None = None,
                      warn: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """``(path, payload)`` of the checkpoint a run in ``run_dir`` continues from, or ``None`` for a new run.

    See the module docstring for the rules. ``config``: the new run's (resolved); when given
    and ``run_dir`` has no checkpoint of its own, a finished run's results there are checked
    with :func:`check_rerun_without_checkpoint` (``warn``: log its warning; false on the ranks
    of a multi-process launch but the first). Raises :class:`ResumeRefused` for
    ``resume=never`` in a directory holding a run or a refused rerun, and
    :class:`~eqdeq_cli.errors.CheckpointError` when the run directory has checkpoints but
    none can be read, or the path cannot be read.
    """
    if resume == "never":
        held = [name for name in RUN_FILES if (run_dir / name).is_file()]
        if held:
            raise ResumeRefused(f"resume=never, but {run_dir} already holds a run ({', '.join(held)}): choose another "
                                "hydra.run.dir for a new run, or resume=auto to continue this one")
        return None
    own = own_checkpoint(run_dir, device)
    if own is None and config is not None:
        check_rerun_without_checkpoint(run_dir, config, start="step 0" if resume == "auto" else resume, warn=warn)
    if own is not None or resume == "auto":
        if own is not None and resume != "auto":
            log.info("resume=%s is where this run started; it has its own checkpoint now: continuing from %s",
                     resume, own[0])
        return own
    source = resolve_checkpoint_path(resume)
    return source, load_checkpoint(source, map_location=device)


def own_checkpoint(run_dir: Path, device: Any = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of ``run_dir/checkpoints``: ``last.pt``, or, when it cannot be
    read, the readable ``*.pt`` with the most steps (warning naming the bad file). ``None``
    when there is no checkpoint; :class:`~eqdeq_cli.errors.CheckpointError` when none is readable."""
    folder = run_dir / CHECKPOINTS
    files = sorted(folder.glob("*.pt"), key=lambda p: (p.name != LAST, p.name)) if folder.is_dir() else []
    readable: list[tuple[Path, dict[str, Any]]] = []
    bad: list[tuple[Path, str]] = []
    for path in files:
        try:
            payload = load_checkpoint(path, map_location=device)
        except CheckpointError as exc:
            bad.append((path, str(exc)))
            continue
        if path.name == LAST:
            return path, payload
        readable.append((path, payload))
    if not readable:
        if bad:
            raise CheckpointError(f"{bad[0][1]}; no other readable checkpoint in {folder}: move the damaged "
                                  "file(s) away to train this run again from the start, or choose another "
                                  "hydra.run.dir")
        return None
    path, payload = max(readable, key=lambda item: int(item[1]["step"]))
    for _, reason in bad:
        log.info("%s", reason, extra={"file_only": True})
    problem = f"{bad[0][0]} cannot be read (truncated or corrupt)" if bad else f"{folder / LAST} is missing"
    log.warning("%s: resuming from %s (step %d) instead, the newest readable checkpoint; the damaged file is "
                "replaced at the next checkpoint", problem, path, int(payload["step"]))
    return path, payload


#: ``status.json`` values of a run that has ended (its results may be all that is left of it).
ENDED = ("completed", "stopped")
SAVED_CONFIG = ".hydra/config.yaml"


def finished_results(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows a run that has ended: ``metrics.json``, and ``status.json`` when
    it says ``completed`` or ``stopped`` (``[]``: none; a failed or running status alone is no
    result to keep)."""
    held = ["metrics.json"] if (run_dir / "metrics.json").is_file() else []
    status = read_status(run_dir)
    if isinstance(status, dict) and status.get("status") in ENDED:
        held.append(f"status.json '{status['status']}'")
    return held


def check_rerun_without_checkpoint(run_dir: Path, config: Mapping[str, Any], start: str = "step 0",
                                   warn: bool = True) -> None:
    """A new run in ``run_dir``, which has no checkpoint, would replace a finished run's results there.

    Nothing happens when ``run_dir`` holds none (:func:`finished_results`). Otherwise
    ``config`` (the new run's, resolved) is compared with the finished run's
    ``.hydra/config.yaml`` as a checkpoint's config is (:func:`check_same_experiment`).
    The same experiment is trained again, with a warning that its results will be replaced
    (``start``: where it starts, ``step 0`` or the ``resume`` path; ``warn``: whether to log
    it). Another experiment, or a
    saved config that is missing or cannot be read, raises :class:`ResumeRefused` naming the
    directory, the differing keys (at most 6) and what to do. Nothing in ``run_dir`` is
    written here.
    """
    held = finished_results(run_dir)
    if not held:
        return
    where = f"{run_dir} holds a finished run ({', '.join(held)}) whose checkpoints were removed"
    todo = (f"to keep its results, choose another hydra.run.dir for this run, or move them out of {run_dir} "
            "first")
    saved_file = run_dir / SAVED_CONFIG
    if not saved_file.is_file():
        raise ResumeRefused(f"{where}, and no {SAVED_CONFIG} to tell whether it is this experiment: {todo}")
    try:
        from omegaconf import OmegaConf

        saved = OmegaConf.to_container(OmegaConf.load(saved_file), resolve=True)
    except Exception as exc:  # YAML or interpolation errors: the comparison cannot be made
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ResumeRefused(f"{where}, and its {saved_file} cannot be read ({reason}): {todo}") from exc
    found = _differences(resolve_auto(saved), resolve_auto(config))
    if found:
        raise ResumeRefused(f"{where}, of another experiment ({SAVED_CONFIG} → now: {_listed(found)}): {todo}")
    replaced = "metrics.json" if "metrics.json" in held else "status.json"
    if warn:
        log.warning("no checkpoint in %s: training this experiment there again from %s; its %s will be replaced",
                    run_dir, start, replaced)


def check_run_length(step: int, max_steps: int, source: Path, resume: str = "auto") -> None:
    """Raises :class:`ResumeRefused` when ``max_steps`` (the new ``trainer.max_steps``) is below
    ``step``, the steps the checkpoint at ``source`` has trained; an equal value (a requeue of
    a finished run) is accepted. ``resume``: the run's setting; with a path, the run starts from
    that checkpoint in any directory, so the message does not suggest another one."""
    if max_steps < step:
        other = ("or choose another hydra.run.dir for a shorter run" if resume in ("auto", "never") else
                 "or leave resume= out for a new, shorter run")
        raise ResumeRefused(f"cannot resume {source}: it has trained {step} steps, and trainer.max_steps={max_steps} "
                            f"cannot shorten it: set trainer.max_steps={step} or more to continue it, evaluate it "
                            f"with eqdeq eval, {other}")


def check_same_experiment(saved: Mapping[str, Any], config: Mapping[str, Any], source: Path, resume: str) -> None:
    """Raises :class:`ResumeRefused` when ``config`` (the new run's, resolved) and ``saved`` (the
    checkpoint's) differ in a key outside :data:`RESUMABLE_KEYS`; the message names the keys
    (at most 6), with the saved and the new value."""
    found = _differences(resolve_auto(saved), resolve_auto(config))
    if not found:
        return
    if resume == "auto":
        restore = restoring_overrides(found)
        todo = ("run the same command as the run did (its .hydra/overrides.yaml) to continue it, or choose "
                "another hydra.run.dir for a new run")
        if restore:
            todo = (f"to continue it as it was trained, add {' '.join(restore)} to the command (a default may "
                    "have changed since the run started), or choose another hydra.run.dir for a new run")
    else:
        todo = (f"resume={resume} continues that run's experiment; start a new experiment without resume=, "
                "or in another hydra.run.dir")
    raise ResumeRefused(f"cannot resume {source}: it was trained with other settings (checkpoint → now: "
                        f"{_listed(found)}): {todo}. Only run length, device, logging and "
                        "checkpoint cadence may change on resume (see README, Resuming)")


def config_differences(saved: Any, new: Any) -> list[str]:
    """``"key: saved → new"`` for every difference between two plain configs outside
    :data:`RESUMABLE_KEYS`; a node whose ``_target_`` changed is one difference (its class)."""
    return [_describe(d) for d in _differences(resolve_auto(saved), resolve_auto(new))]


#: Keys whose value ``auto`` stands for ``ramp`` under a physics with a measurement weight (CT)
#: and for ``none`` under any other.
AUTO_PRECONDITIONER_KEYS = (("map", "preconditioner"), ("loss", "terms", "mc", "preconditioner"),
                            ("loss", "terms", "sure", "preconditioner"))


ROTATIONS = "eqdeq_cli.groups.Rotations"


def _rotation_group(config: Any) -> Mapping[str, Any] | None:
    """``config``'s group node when it is a rotation group, else ``None``."""
    group = config.get("group") if isinstance(config, Mapping) else None
    if isinstance(group, Mapping) and group.get("_target_") in (ROTATIONS, "eqdeq_cli.groups.rotations.Rotations"):
        return group
    return None


def with_former_turns(config: Any) -> Any:
    """``config`` with the quarter turns an exact rotation group drew before ``turns`` existed
    (every multiple of 90° within ``max_angle``: all four at the default 180°) written into a
    group node that lacks the key; other configs as they are. A run of those versions is
    thus rebuilt (``eqdeq eval``, ``eqdeq analyze``) and compared with the group it trained
    with, not with today's default of ±90°."""
    group = _rotation_group(config)
    if group is None or "turns" in group or group.get("exact") is not True:
        return config
    out = copy.deepcopy(dict(config))
    max_angle = float(group.get("max_angle", 180.0))
    out["group"] = {**group, "turns": sorted({k % 4 for k in range(-2, 3) if abs(90 * k) <= max_angle})}
    return out


def resolve_turns(config: Any) -> Any:
    """``config`` with an exact rotation group's ``turns`` replaced by the quarter turns it draws,
    a sorted list (``null``: ±90°; missing, in a config written before the key existed: as
    :func:`with_former_turns`), and a continuous one's by ``null``; other configs as they are.
    So a run from before ``turns`` resumes only with the turns it drew
    (``group.turns=[0,1,2,3]``), and a continuous-angle run resumes unchanged. Turns that are
    not all integers are kept as given (the group refuses them when built)."""
    config = with_former_turns(config)
    if _rotation_group(config) is None:
        return config
    out = copy.deepcopy(dict(config))
    node = out["group"] = dict(out["group"])
    exact = bool(node.get("exact", False))
    try:
        node["turns"] = drawn_turns(node.get("turns") if exact else None, exact)
    except ValueError:  # kept as given: the group refuses them when built
        pass
    return out


def resolve_auto(config: Any) -> Any:
    """``config`` with each ``auto`` of :data:`AUTO_PRECONDITIONER_KEYS` replaced by what it means
    under the config's physics (``ramp`` or ``none``), so that ``auto`` and its meaning compare
    equal (an MRI run from before the key existed resumes under ``auto``), and the rotation
    group's turns resolved (:func:`resolve_turns`). A config without a physics class that can
    be imported keeps its ``auto`` values."""
    config = resolve_turns(config)
    if not isinstance(config, Mapping):
        return config
    physics = config.get("physics")
    target = physics.get("_target_") if isinstance(physics, Mapping) else None
    try:
        from hydra.utils import get_class

        physics_type = get_class(target) if target else None
    except Exception:  # an unknown or moved class: compare the values as written
        physics_type = None
    if physics_type is None:
        return config
    out = copy.deepcopy(dict(config))
    for path in AUTO_PRECONDITIONER_KEYS:
        node = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, dict) and node.get(path[-1]) == "auto":
            node[path[-1]] = resolve_preconditioner("auto", physics_type)
    return out


def restoring_overrides(found: list[tuple[str, Any, Any]]) -> list[str]:
    """Command-line overrides ``key=value`` that give back the checkpoint's settings, when every
    difference is a plain value (a number, string, bool or null) present in both configs, or a
    key of :data:`ADDED_KEYS` missing from the checkpoint (its former value is restored);
    otherwise ``[]`` (a changed class or key set is not one override away)."""
    out = []
    for path, saved, new in found:
        if saved is _ABSENT and path in ADDED_KEYS:
            saved = ADDED_KEYS[path]
        if path.endswith("._target_") or saved is _ABSENT or new is _ABSENT \
                or not all(_plain(v) or isinstance(v, list) and all(map(_plain, v)) for v in (saved, new)):
            return []
        out.append(f"{path}={_override_value(saved)}")
    return out


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _override_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str) and not re.fullmatch(r"[\w./:-]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def setting_differences(saved: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, saved, new)`` per difference between two plain config nodes found at ``path``,
    outside :data:`RESUMABLE_KEYS`, in the new node's key order and then the keys only
    ``saved`` has; a key missing on one side has the value :data:`ABSENT`, and a node whose
    class changed is one difference, ``(key._target_, saved class, new class)``. A key of
    :data:`ADDED_KEYS` missing from ``saved`` matches its former value."""
    return _differences(saved, new, path)


def _differences(saved: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, saved, new)`` per difference; for a changed class, ``(key._target_, saved, new)``."""
    if _resumable(path):
        return []
    if isinstance(saved, Mapping) and isinstance(new, Mapping):
        if path and saved.get("_target_") != new.get("_target_"):
            return [(f"{path}._target_", saved.get("_target_"), new.get("_target_"))]
        out: list[tuple[str, Any, Any]] = []
        for key in [*new, *(k for k in saved if k not in new)]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in saved and sub in ADDED_KEYS and _same_value(new[key], ADDED_KEYS[sub]):
                continue
            if key not in saved or key not in new:
                if not _resumable(sub):
                    out.append((sub, saved.get(key, _ABSENT), new.get(key, _ABSENT)))
                continue
            out += _differences(saved[key], new[key], sub)
        return out
    if _same_value(saved, new):
        return []
    return [(path, saved, new)]


def _listed(found: list[tuple[str, Any, Any]], most: int = 6) -> str:
    """The first ``most`` differences described, ``"; "``-separated, and how many more there are."""
    diffs = [_describe(d) for d in found]
    more = f" and {len(diffs) - most} more" if len(diffs) > most else ""
    return "; ".join(diffs[:most]) + more


def _describe(diff: tuple[str, Any, Any]) -> str:
    path, saved, new = diff
    if path.endswith("._target_"):
        return f"{path[:-len('._target_')]}: {_short(saved)} → {_short(new)}"
    return f"{path}: {_show(saved)} → {_show(new)}"


#: The value of a key that one of two compared configs does not have.
ABSENT = _ABSENT = object()


def _resumable(path: str) -> bool:
    return any(path == key or path.startswith(f"{key}.") for key in RESUMABLE_KEYS)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(not config_differences(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                              and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _short(target: Any) -> str:
    return "(none)" if target is None else str(target).rsplit(".", 1)[-1]


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
