"""Whether autocast is on: the one check the solvers and the operators share."""
from __future__ import annotations

import torch


def autocast_enabled(device_type: str) -> bool:
    """Whether :func:`torch.autocast` is on for ``device_type`` (``"cpu"``, ``"cuda"``, ...);
    ``False`` for a device type without autocast support."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (RuntimeError, TypeError):  # a device type without autocast support
        return False
