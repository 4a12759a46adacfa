"""Symmetry groups acting on images ``(B, C, H, W)``, one element per sample."""
from .base import Group
from .reflections import Reflections
from .rotations import Rotations
from .scalings import Scalings
from .shifts import Shifts

__all__ = ["Group", "Shifts", "Rotations", "Reflections", "Scalings"]
