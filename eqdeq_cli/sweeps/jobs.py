"""Reading the job directories of a sweep (the run output contract) for ``eqdeq collect``.

A job directory holds ``.hydra/overrides.yaml``, ``.hydra/config.yaml``, ``metrics.json``
and ``status.json``, and ``analysis.json`` once ``eqdeq analyze`` has run on it (its
``"summary"`` scalars become metrics named ``an_<key>``); :func:`read_job` turns one into a :class:`JobResult` and never raises
for a broken job: what went wrong is kept in ``JobResult.error``.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..runs.directory import lock_is_held

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    """One job of a sweep.

    ``path`` is relative to the sweep directory; ``overrides`` maps each override key
    (without Hydra's ``+``/``++``/``~`` prefix) to its value as typed on the command line;
    ``status`` is ``"ok"`` (a ``metrics.json``, and ``status.json`` says ``"completed"`` or is
    absent, as in runs from before it existed), ``"failed"`` (a failure marker or unreadable
    metrics) or ``"incomplete"`` (no ``metrics.json`` yet: running, preempted or killed; or
    ``status.json`` says ``"running"`` or ``"stopped"`` while a ``metrics.json`` of an earlier
    completion is still there: a run being trained further); ``error`` says why.
    ``time_cap``: the ``time_cap`` note of ``metrics.json`` when ``trainer.max_minutes`` ended
    the training before ``trainer.max_steps`` (its metrics are of fewer steps), else ``None``.
    """

    path: str
    overrides: dict[str, str]
    config: dict[str, Any]
    metrics: dict[str, float]
    status: str
    error: str | None = None
    time_cap: str | None = None


def _stale_note(job_dir: Path, run_status: str | None) -> str:
    """For a job whose status says ``running`` while no process holds its directory's lock:
    it was killed without a chance to say so (``kill -9``, out of memory, a node lost)."""
    if run_status != "running" or lock_is_held(job_dir) is not False:
        return ""
    return ("; no process holds its lock: killed, or running on a machine that does not share file locks; "
            "the same command resumes it")


def find_job_dirs(root: Path) -> list[Path]:
    """Job directories under ``root`` (``root`` itself included), in natural order.

    A job directory holds ``.hydra/`` or ``metrics.json``; hidden directories (``.submitit``)
    are skipped and the search does not descend into a job directory.
    """
    found: list[Path] = []

    def visit(d: Path) -> None:
        if (d / ".hydra").is_dir() or (d / "metrics.json").is_file():
            found.append(d)
            return
        for child in sorted(d.iterdir(), key=lambda p: natural_key(p.name)):
            if child.is_dir() and not child.name.startswith("."):
                visit(child)

    visit(root)
    return found


def read_job(job_dir: Path, root: Path) -> JobResult:
    """Read one job's overrides, config, metrics and failure marker; never raises for a bad job."""
    rel = job_dir.relative_to(root).as_posix() if job_dir != root else "."
    errors: list[str] = []
    overrides: dict[str, str] = {}
    config: dict[str, Any] = {}
    ov_file = job_dir / ".hydra" / "overrides.yaml"
    if ov_file.is_file():
        try:
            overrides = parse_overrides(yaml.safe_load(ov_file.read_text()) or [])
        except (yaml.YAMLError, ValueError) as exc:
            errors.append(f"unreadable {ov_file.name}: {exc}")
    cfg_file = job_dir / ".hydra" / "config.yaml"
    if cfg_file.is_file():
        try:
            loaded = yaml.safe_load(cfg_file.read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError as exc:
            errors.append(f"unreadable {cfg_file.name}: {exc}")

    status = "ok"
    run_status = None
    status_file = job_dir / "status.json"
    if status_file.is_file():
        try:
            marker = json.loads(status_file.read_text())
        except json.JSONDecodeError as exc:
            marker = {"status": "failed", "error": f"unreadable status.json: {exc}"}
        run_status = marker.get("status") if isinstance(marker, dict) else None
        if run_status == "failed":
            status = "failed"
            errors.insert(0, str(marker.get("error") or "failed (no error message)"))

    metrics: dict[str, float] = {}
    step: int | None = None  # the step of metrics.json
    time_cap = None
    metrics_file = job_dir / "metrics.json"
    if not metrics_file.is_file():
        if status == "ok":
            # "running" (or killed hard), "stopped" (preempted, waiting for its requeue)
            state = f"status {run_status!r}" if run_status else "still running, or killed"
            errors.insert(0, f"incomplete: no metrics.json ({state}{_stale_note(job_dir, run_status)})")
            status = "incomplete"
    else:
        try:
            raw = json.loads(metrics_file.read_text())
            metrics = flatten_metrics(raw)
            time_cap = raw.get("time_cap") if isinstance(raw.get("time_cap"), str) else None
            found = raw.get("step")
            step = found if isinstance(found, int) and not isinstance(found, bool) else None
        except (json.JSONDecodeError, ValueError) as exc:
            status = "failed"
            errors.append(f"unreadable metrics.json: {exc}")
        if status == "ok" and status_file.is_file() and run_status != "completed":
            # claimed again (trained further, a longer rerun) and not finished: the metrics
            # are of the earlier model, not of the settings now in .hydra/overrides.yaml
            at = f" at step {step}" if step is not None else ""
            errors.insert(0, f"incomplete: status {run_status!r} (metrics.json is from an earlier completion{at}"
                             f"{_stale_note(job_dir, run_status)})")
            status = "incomplete"
    if status == "ok":
        metrics.update(read_analysis_summary(job_dir, step=step))
    if status != "ok":
        log.info("job %s failed: %s", rel, "; ".join(errors))
    return JobResult(
        path=rel,
        overrides=overrides,
        config=config,
        metrics=metrics if status == "ok" else {},
        status=status,
        error="; ".join(errors) if status != "ok" else None,
        time_cap=time_cap if status == "ok" else None,
    )


def read_group_choices(job_dir: Path) -> dict[str, str]:
    """The config group options Hydra composed the job from, ``{"grad": "implicit",
    "trainer/optimizer": "adam", ...}`` (``hydra.runtime.choices`` of ``.hydra/hydra.yaml``;
    groups left unselected, ``null`` there, are left out). ``{}`` without that file (runs not
    started by Hydra); an unreadable one is logged and read as absent."""
    path = job_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        log.warning("skipping unreadable %s: %s", path, exc)
        return {}
    node: Any = data
    for part in ("hydra", "runtime", "choices"):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return {}
    return {str(k): v for k, v in node.items() if isinstance(v, str)}


#: Prefix of the metrics read from a job's ``analysis.json``.
ANALYSIS_PREFIX = "an_"


def read_analysis_summary(job_dir: Path, step: int | None = None) -> dict[str, float]:
    """``{"an_<key>": value}`` from the ``"summary"`` of ``job_dir/analysis.json`` (``{}`` when
    the file is absent; an unreadable file is logged and skipped, it does not fail the job).
    ``step``: the step of the job's ``metrics.json``; an analysis of another step (a model
    trained further since) is left out with a warning, so its numbers never sit beside
    metrics of another model."""
    path = job_dir / "analysis.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        summary = data.get("summary", {}) if isinstance(data, dict) else {}
        analysed = data.get("step") if isinstance(data, dict) else None
        if step is not None and isinstance(analysed, int) and analysed != step:
            log.warning("%s is of step %d, the job's metrics.json of step %d: its columns are left out "
                        "(eqdeq analyze ckpt=%s analyses the model as it is now)", path, analysed, step, job_dir)
            return {}
        return {f"{ANALYSIS_PREFIX}{k}": v for k, v in flatten_metrics(summary).items()}
    except (json.JSONDecodeError, ValueError) as exc:
        log.warning("skipping unreadable %s: %s", path, exc)
        return {}


def parse_overrides(items: Sequence[Any]) -> dict[str, str]:
    """``["grad=jfb", "+debug=smoke"]`` → ``{"grad": "jfb", "debug": "smoke"}``.

    The key loses Hydra's ``+``, ``++`` and ``~`` prefixes; the value is kept as typed,
    except booleans, which Hydra reads case-insensitively (``False`` and ``false`` are the
    same value) and which are written in lower case. A deletion (``~key``) maps to ``"~"``.
    """
    if not isinstance(items, list):
        raise ValueError(f"expected a list of overrides, got {type(items).__name__}")
    out: dict[str, str] = {}
    for item in items:
        text = str(item)
        key, sep, value = text.partition("=")
        if text.startswith("~"):
            out[key.lstrip("~")] = "~"
        elif sep:
            out[key.lstrip("+")] = value.lower() if value.lower() in ("true", "false") else value
        else:
            raise ValueError(f"override {text!r} is not of the form key=value")
    return out


def flatten_metrics(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a metrics dict, nested keys joined by dots; booleans and strings skipped."""
    if not isinstance(data, dict):
        raise ValueError(f"metrics.json must hold an object, got {type(data).__name__}")
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out



def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders numbers by value (``2 < 10``, ``1e-4 < 1e-3``) and text alphabetically."""
    try:
        return (0, float(text), "")
    except ValueError:
        parts = re.split(r"(\d+)", text)
        return (1, 0.0, tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts))
