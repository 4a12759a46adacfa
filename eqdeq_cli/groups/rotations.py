r"""Rotations of images about their centre: continuous angles or exact multiples of 90°."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..utils.checks import as_list
from .base import Group, check_images, disc_mask, randint

_PADDING = ("zeros", "border", "reflection")
_INTERPOLATION = ("bilinear", "fourier")


#: The quarter turns exact rotations draw by default: ±90° (see :class:`Rotations`).
DEFAULT_TURNS = (1, 3)


def drawn_turns(turns: object, exact: bool) -> list[int] | None:
    """The quarter turns a rotation group with these settings draws, sorted (``turns=None``:
    :data:`DEFAULT_TURNS`); ``None`` for continuous angles (``exact=False``) when ``turns`` is
    ``None``. The one reading of ``turns``: :class:`Rotations` draws from it, and the resume
    comparison (:func:`~eqdeq_cli.runs.resume.resolve_turns`) compares runs by it.

    Raises:
        ValueError: ``turns`` that are not distinct values in ``{0, 1, 2, 3}``, or given with
            continuous angles."""
    if turns is None:
        return list(DEFAULT_TURNS) if exact else None
    values = as_list(turns)
    if not values or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 3 for k in values) \
            or len(set(values)) != len(values):
        raise ValueError(f"Rotations: turns must be distinct quarter turns from 0, 1, 2, 3 (multiples of 90°), "
                         f"got {turns!r}")
    if not exact:
        raise ValueError("Rotations: turns chooses among exact quarter turns (group.exact=true); continuous angles "
                         "(group.exact=false) are drawn from [-max_angle, max_angle]: leave turns at null")
    return sorted(values)


class Rotations(Group):
    r"""Rotations about the image centre, one element per sample.

    Continuous mode (``exact=False``): ``g`` is a ``(B,)`` float64 tensor of angles in
    degrees, uniform in ``[-max_angle, max_angle]``, and the image is resampled by
    ``interpolation``:

    * ``"bilinear"``: ``affine_grid`` + ``grid_sample`` (``align_corners=False``). Each
      resampling averages neighbouring pixels, so a rotated image is a smoothed one:
      ``apply_inverse(apply(x, g), g)`` of the 64² ellipse phantoms is only about 22.5 dB
      from ``x`` (brain slices: 32.6 dB).
    * ``"fourier"``: the quarter turn nearest the angle (exact), then the rest
      (``|θ| ≤ 45°``) as three shears, along x by ``tan(θ/2)``, along y by ``sin θ`` and
      along x again (Paeth, Graphics Interface 1986), each a per-line shift by the Fourier shift theorem
      (Unser, Thévenaz, Yaroslavsky, IEEE Trans. Image Process. 1995) on the image
      zero-padded to twice its size. Each shear is unitary, so nothing is smoothed away;
      what is lost is the ringing of sharp edges that falls outside the image (round trip
      about 41 dB on the ellipse phantoms, 57 dB on brain slices, exact for band-limited
      images). Square images only; ``padding="zeros"`` only.

    With either, ``apply_inverse(apply(x, g), g) ≈ x`` only inside the disc inscribed in
    the image (the corners leave the field of view and come back as ``padding``).
    Non-square images are rotated in pixel units (the aspect ratio is kept).

    Exact mode (``exact=True``): ``g`` is a ``(B,)`` int64 tensor of quarter turns ``k``
    (``torch.rot90`` by ``k``), uniform over ``turns``; exactly invertible; square images
    only. By default ``turns`` is ``(1, 3)``, the turns by ±90°: the identity teaches an EI
    loss nothing (``x₂ = x₁``), and neither does the half turn on the built-in operators
    (parallel-beam CT, whose views at ``θ`` and ``θ + 180°`` measure the same line
    integrals, and the default Cartesian MRI mask: a half-turned nullspace image stays
    unseen, :func:`~eqdeq_cli.analysis.identifiability.identifiability` gives it ``ρ`` at
    the leakage level). Drawing only ±90° gives every sample of a batch a transform that
    moves what ``A`` measures (a CT scan of an odd number of views onto the angles half-way
    between its own; a Cartesian mask's sampled columns onto rows). ``turns=(0, 1, 2, 3)``
    draws all four, as versions before this option did with ``max_angle=180``.

    Both modes rotate in the same direction: a continuous rotation by ``90 k`` degrees of a
    square image equals ``torch.rot90(x, k, dims=(-2, -1))`` up to rounding.

    Args:
        max_angle: largest angle in degrees, in ``(0, 180]``, of continuous angles (``≥ 90``
            when exact, where ``turns`` chooses the angles).
        exact: restrict to multiples of 90°.
        padding: ``grid_sample`` padding outside the image: zeros, border or reflection.
        interpolation: resampling of continuous angles: bilinear or fourier.
        turns: the quarter turns drawn in exact mode, as multiples ``k`` of 90°
            counter-clockwise, distinct values in ``{0, 1, 2, 3}``; ``None``: ``(1, 3)``.
            Continuous mode takes ``None`` only.

    Raises:
        ValueError: an angle outside ``(0, 180]``, an unknown padding or interpolation,
            ``interpolation="fourier"`` with a padding other than zeros, ``turns`` that are
            not distinct values in ``{0, 1, 2, 3}`` or that are given in continuous mode; when applied,
            non-square images in exact or Fourier mode, or elements of the other mode.
    """

    def __init__(self, *, max_angle: float = 180.0, exact: bool = False, padding: str = "zeros",
                 interpolation: str = "bilinear", turns: list[int] | tuple[int, ...] | None = None) -> None:
        if not (isinstance(max_angle, (int, float)) and 0 < max_angle <= 180):
            raise ValueError(f"Rotations: max_angle must be a number of degrees in (0, 180], got {max_angle!r}")
        if exact and max_angle < 90:
            raise ValueError(f"Rotations(exact=True) uses multiples of 90°, so max_angle must be ≥ 90, got {max_angle}")
        if padding not in _PADDING:
            raise ValueError(f"Rotations: padding must be one of {', '.join(_PADDING)}, got {padding!r}")
        if interpolation not in _INTERPOLATION:
            raise ValueError(f"Rotations: interpolation must be one of {', '.join(_INTERPOLATION)}, "
                             f"got {interpolation!r}")
        if interpolation == "fourier" and padding != "zeros":
            raise ValueError(f"Rotations(interpolation='fourier') pads with zeros only, got padding={padding!r}")
        self.max_angle = float(max_angle)
        self.exact = bool(exact)
        self.padding = padding
        self.interpolation = interpolation
        self._quarters = drawn_turns(turns, self.exact)
        self.turns = None if turns is None else tuple(self._quarters)  # as given, sorted

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None,
               img_size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.exact:
            idx = randint(0, len(self._quarters), (batch_size,), generator, None)
            return torch.tensor(self._quarters, dtype=torch.long)[idx].to(device or "cpu")
        u = torch.rand((batch_size,), generator=generator, dtype=torch.float64)
        return ((2 * u - 1) * self.max_angle).to(device or "cpu")

    def field_of_view(self, height: int, width: int, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """Continuous angles move the corners out of the image: the inscribed disc stays."""
        return None if self.exact else disc_mask(height, width, device=device, dtype=dtype)

    def apply(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        check_images("Rotations", x, g)
        if self.exact:
            return _rot90_per_sample(x, g)
        if self.interpolation == "fourier":
            return _fourier_rotate(x, _angles(g), inverse=False)
        return self._rotate(x, g)

    def apply_inverse(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        check_images("Rotations", x, g)
        if self.exact:
            return _rot90_per_sample(x, -g)
        if self.interpolation == "fourier":
            return _fourier_rotate(x, _angles(g), inverse=True)
        return self._rotate(x, -g)

    def _rotate(self, x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
        _angles(degrees)
        h, w = x.shape[-2:]
        theta = degrees.to(device=x.device, dtype=torch.float64) * (math.pi / 180.0)
        c, s = torch.cos(theta), torch.sin(theta)
        # Output pixel p (centred pixel units, (x, y) = (column, row)) samples the input at
        # R(θ) p, the sign that matches torch.rot90. affine_grid works in coordinates
        # normalised by (W/2, H/2), so R is conjugated by that scaling.
        mat = torch.stack([torch.stack([c, -s * (h / w), torch.zeros_like(c)], -1),
                           torch.stack([s * (w / h), c, torch.zeros_like(c)], -1)], -2)
        grid = F.affine_grid(mat.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding, align_corners=False)

    def __repr__(self) -> str:
        return (f"Rotations(max_angle={self.max_angle}, exact={self.exact}, padding={self.padding!r}, "
                f"interpolation={self.interpolation!r}" + (f", turns={self._quarters}" if self.exact else "") + ")")


def _angles(degrees: torch.Tensor) -> torch.Tensor:
    if not degrees.is_floating_point():
        raise ValueError("Rotations(exact=False) expects angles in degrees (a float tensor), "
                         f"got dtype {degrees.dtype}; were these elements sampled with exact=True?")
    return degrees


def _shear(x: torch.Tensor, factor: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift line ``i`` of each ``(H, W)`` image along ``dim`` by ``factor[b] · c_i`` pixels,
    ``c_i`` the line's offset from the centre (the other axis), by the Fourier shift theorem.
    ``dim=-1``: rows move along x; ``dim=-2``: columns move along y."""
    n = x.shape[dim]
    other = x.shape[-2] if dim == -1 else x.shape[-1]
    offsets = torch.arange(other, dtype=torch.float64, device=x.device) - (other - 1) / 2
    freqs = torch.fft.fftfreq(n, dtype=torch.float64, device=x.device)
    shift = factor.to(device=x.device, dtype=torch.float64)[:, None] * offsets          # (B, other)
    phase = torch.polar(torch.ones((), dtype=torch.float64, device=x.device),
                        -2 * math.pi * shift[:, :, None] * freqs)                     # (B, other, n)
    if dim == -2:
        phase = phase.transpose(1, 2)
    phase = phase[:, None].to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    return torch.fft.ifft(torch.fft.fft(x, dim=dim) * phase, dim=dim).real


def _fourier_rotate(x: torch.Tensor, degrees: torch.Tensor, *, inverse: bool) -> torch.Tensor:
    """Rotation by ``degrees`` (per sample): quarter turns by ``torch.rot90``, the remainder
    by three Fourier shears on the zero-padded image; ``inverse`` undoes the same steps in
    reverse order, so ``inverse ∘ forward`` is the identity up to what the crop cuts off."""
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(f"Rotations(interpolation='fourier') needs square images, got H×W = {h}×{w}; "
                         "use interpolation=bilinear")
    degrees = degrees.to(torch.float64)
    quarters = torch.round(degrees / 90.0)
    theta = (degrees - 90.0 * quarters) * (math.pi / 180.0)
    along_x, along_y = torch.tan(theta / 2), -torch.sin(theta)
    if inverse:
        along_x, along_y = -along_x, -along_y
    else:
        x = _rot90_per_sample(x, quarters.long())
    ph, pw = h // 2, w // 2
    z = F.pad(x, (pw, pw, ph, ph))
    z = _shear(_shear(_shear(z, along_x, -1), along_y, -2), along_x, -1)
    z = z[..., ph:ph + h, pw:pw + w].to(x.dtype)
    return _rot90_per_sample(z, -quarters.long()) if inverse else z


def _rot90_per_sample(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``torch.rot90(x[b], k[b], dims=(-2, -1))`` for each sample, one call per distinct ``k``."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"Rotations(exact=True) needs square images, got H×W = {x.shape[-2]}×{x.shape[-1]}; "
                         "use exact=false for continuous rotations")
    if k.is_floating_point():
        raise ValueError("Rotations(exact=True) expects integer quarter turns, got a float tensor; "
                         "were these elements sampled with exact=False?")
    k = (k.to("cpu") % 4).long()
    out = torch.empty_like(x)
    for q in range(4):
        idx = (k == q).nonzero().flatten().to(x.device)
        if idx.numel():
            out[idx] = torch.rot90(x[idx], q, dims=(-2, -1))
    return out
