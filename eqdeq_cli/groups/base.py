"""Base class for symmetry groups acting on images ``(B, C, H, W)``."""
from __future__ import annotations

import torch


class Group:
    """A group of image transforms ``T_g``, sampled independently for each sample.

    Subclasses implement :meth:`sample` (one element per sample, as a tensor whose
    first dimension is the batch) and :meth:`apply` / :meth:`apply_inverse`, with
    ``apply_inverse(apply(x, g), g) == x`` (exactly for discrete groups, up to
    interpolation for continuous rotations).

    Randomness: elements are drawn on the CPU from ``generator`` (the global CPU RNG when
    it is ``None``) and then moved to ``device``, so a seed gives the same elements on
    every device.
    """

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None,
               img_size: tuple[int, int] | None = None) -> torch.Tensor:
        """One element per sample. ``img_size = (H, W)`` is optional: groups whose range
        depends on the image (full-range shifts) use it to return elements in canonical
        form; every group also works without it."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_inverse(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def energy_gain(self) -> float:
        """Mean of ``‖T_g x‖² / ‖x‖²`` over the drawn elements, for images inside the disc
        inscribed in the image: 1 for the isometries (shifts, reflections, rotations). The EI
        loss's ``auto`` weight divides by it, so that a group that shrinks images does not
        shrink the term."""
        return 1.0

    def field_of_view(self, height: int, width: int, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """``(H, W)`` weights of the pixels that every element keeps inside the image, or
        ``None`` when every element keeps every pixel (shifts, reflections, quarter turns).
        An equivariance error is measured on these pixels only."""
        return None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a freshly sampled element per sample; returns ``(T_g x, g)``."""
        g = self.sample(x.shape[0], generator=generator, device=x.device, img_size=tuple(x.shape[-2:]))
        return self.apply(x, g), g


def disc_mask(height: int, width: int, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(H, W)`` indicator of the disc inscribed in the image (pixel centres within
    ``min(H, W)/2`` of the centre). Continuous rotations move the corners out of the
    field of view; restrict the error to this disc to leave that effect out."""
    yy = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    xx = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    r2 = yy[:, None] ** 2 + xx[None, :] ** 2
    return (r2 <= (min(height, width) / 2) ** 2).to(device=device, dtype=dtype)


def check_images(name: str, x: torch.Tensor, g: torch.Tensor) -> None:
    """Raise a clear ``ValueError`` unless ``x`` is ``(B, C, H, W)`` with one element of ``g`` per sample."""
    if x.ndim != 4:
        raise ValueError(f"{name} acts on images of shape (B, C, H, W), got {tuple(x.shape)}")
    if g.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: {g.shape[0]} group elements for a batch of {x.shape[0]} images")


def randint(low: int, high: int, size: tuple[int, ...], generator: torch.Generator | None,
            device: torch.device | str | None) -> torch.Tensor:
    """Integers uniform in ``[low, high)``, drawn on the CPU and moved to ``device``."""
    return torch.randint(low, high, size, generator=generator, device="cpu").to(device or "cpu")
