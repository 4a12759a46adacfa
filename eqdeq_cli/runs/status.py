"""``status.json``: what happened to a run, readable by sweeps and collectors.

``{"status": "running" | "completed" | "stopped" | "failed", "task": ..., "error": ...}``
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..utils.files import write_json

STATUS_FILE = "status.json"


def write_status(run_dir: str | os.PathLike, status: str, **fields: Any) -> Path:
    """Atomically write ``run_dir/status.json``."""
    return write_json(Path(run_dir) / STATUS_FILE, {"status": status, **fields})


def read_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The content of ``run_dir/status.json``, or ``None`` when absent or unreadable."""
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
