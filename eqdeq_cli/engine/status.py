"""``status.json``: what happened to a run, readable by sweeps and collectors.

``{"status": "running" | "completed" | "stopped" | "failed", "task": ..., "error": ...}``
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def write_status(run_dir: str | os.PathLike, status: str, **fields: Any) -> Path:
    """Atomically write ``run_dir/status.json``."""
    path = Path(run_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"status": status, **fields}, f, indent=2, default=str)
    os.replace(tmp, path)
    return path


def read_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The content of ``run_dir/status.json``, or ``None`` when absent or unreadable."""
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Atomically write ``data`` as indented JSON (non-finite floats as ``NaN`` / ``Infinity``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path
