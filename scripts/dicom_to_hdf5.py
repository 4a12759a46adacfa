#!/usr/bin/env python
r"""Convert a folder of CT or MR DICOM slices into the HDF5 layout that ``HDF5Data`` reads.

Each slice (or frame of a multi-frame file) is converted to physical units with the DICOM
modality transform, :math:`v = \text{RescaleSlope}\cdot p + \text{RescaleIntercept}`
(Hounsfield units for CT), read per frame from the functional groups of Enhanced
multi-frame objects (per-frame, else shared Pixel Value Transformation) and from the top
level otherwise; pixel padding (``PixelPaddingValue``) takes the frame's smallest real
value. Then it is mapped to [0, 1] by a window

.. math::

    x = \operatorname{clip}\big((v - \ell) / (h - \ell), 0, 1\big),

with :math:`[\ell, h]` = ``--window CENTER WIDTH`` (:math:`c \mp w/2`), ``--range LOW HIGH``,
or by default the minimum and maximum over all slices (one mapping for the whole set,
so contrast is comparable across slices); MONOCHROME1 slices (minimum displayed white) are
then inverted, :math:`x \mapsto 1 - x`, so every output is MONOCHROME2. Last, centre-cropped
to a square and resized to ``--size`` (area averaging when shrinking, bilinear when enlarging).

Compressed transfer syntaxes (JPEG, JPEG lossless, JPEG-LS, JPEG 2000) need a decoder
package (``pip install eqdeq[dicom-codecs]``); a file that cannot be decoded stops the
conversion with one line naming it and the package, or with ``--skip-unreadable`` is left
out and counted. A non-linear Modality LUT and colour images are refused.

Slices are grouped by series (``SeriesInstanceUID``) and ordered along the slice normal
(``ImagePositionPatient`` · normal of ``ImageOrientationPatient``, per frame from the
functional groups of multi-frame objects), else by
``InstanceNumber``, else by file name. Splits are contiguous in that order: with
several series whole series are assigned to splits (no patient straddles two splits);
with one series, slices are. The output holds groups ``train``, ``val``, ``test`` (empty
ones omitted), each with a float32 dataset ``(N, 1, S, S)`` named ``--key``.

Example::

    python scripts/dicom_to_hdf5.py ~/dicom/ct_series ct.h5 --window 40 400 --size 128 \
        --val-fraction 0.1 --test-fraction 0.1
    eqdeq train data=hdf5 data.path=ct.h5 data.img_size=128 physics=ct

Needs ``pydicom`` (``pip install eqdeq[dicom]``).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from eqdeq_cli.utils.files import atomic_path

log = logging.getLogger("dicom_to_hdf5")
SPLITS = ("train", "val", "test")


def import_pydicom() -> Any:
    """Import ``pydicom`` or raise an ``ImportError`` saying how to install it."""
    try:
        import pydicom
    except ImportError as err:
        raise ImportError("reading DICOM needs pydicom: pip install eqdeq[dicom]") from err
    return pydicom


#: Decoders of compressed transfer syntaxes, by UID prefix: the package that pydicom needs.
DECODERS: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.1.2.4.5", "pylibjpeg-libjpeg"),   # JPEG baseline / extended
    ("1.2.840.10008.1.2.4.57", "pylibjpeg-libjpeg"),  # JPEG lossless
    ("1.2.840.10008.1.2.4.70", "pylibjpeg-libjpeg"),  # JPEG lossless, first-order prediction
    ("1.2.840.10008.1.2.4.8", "pylibjpeg-libjpeg"),   # JPEG-LS
    ("1.2.840.10008.1.2.4.9", "pylibjpeg-openjpeg"),  # JPEG 2000
    ("1.2.840.10008.1.2.4.20", "pylibjpeg-openjpeg"),  # HTJ2K
)


class UnreadableFile(ValueError):
    """A DICOM file whose pixels cannot be decoded here (``--skip-unreadable`` skips it)."""


def _decoder_hint(ds: Any) -> str:
    """``"<transfer syntax> pixel data; <how to decode it>"`` for a file pydicom could not decode."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    uid, name = (str(syntax), getattr(syntax, "name", str(syntax))) if syntax else ("", "unknown transfer syntax")
    package = next((pkg for prefix, pkg in DECODERS if uid.startswith(prefix)), None)
    hint = (f"install its decoder: pip install eqdeq[dicom-codecs] (or {package})" if package
            else "pydicom cannot decode this transfer syntax")
    return f"{name} pixel data; {hint}"


def _item(ds: Any, frame: int, sequence: str) -> Any | None:
    """The first item of ``sequence`` for ``frame``: per-frame functional groups first, then shared
    ones (Enhanced multi-frame objects), ``None`` where neither holds it."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        inner = seq[index].get(sequence) if seq is not None and len(seq) > index else None
        if inner:
            return inner[0]
    return None


def modality_transform(ds: Any, frame: int) -> tuple[float, float]:
    """``(slope, intercept)`` of the modality transform of ``frame``: the Pixel Value Transformation
    of the functional groups (Enhanced CT / MR), else the top-level Rescale Slope / Intercept."""
    src = _item(ds, frame, "PixelValueTransformationSequence") or ds
    return float(src.get("RescaleSlope", 1.0) or 1.0), float(src.get("RescaleIntercept", 0.0) or 0.0)


def slice_position(ds: Any, frame: int = 0) -> float | None:
    """Position of ``frame`` along the slice normal (``ImagePositionPatient`` · normal of
    ``ImageOrientationPatient``, from the functional groups of a multi-frame object when there)."""
    plane = _item(ds, frame, "PlanePositionSequence")
    orient_item = _item(ds, frame, "PlaneOrientationSequence")
    pos = (plane or ds).get("ImagePositionPatient")
    orient = (orient_item or ds).get("ImageOrientationPatient")
    if pos is None or orient is None or len(orient) != 6:
        return None
    normal = np.cross(np.asarray(orient[:3], float), np.asarray(orient[3:], float))
    return float(np.dot(np.asarray(pos, float), normal))


def _padding(ds: Any, stored: np.ndarray) -> np.ndarray | None:
    """Mask of pixels that are Pixel Padding (outside the scanned area), or ``None``."""
    if "PixelPaddingValue" not in ds:
        return None
    a = float(ds.PixelPaddingValue)
    b = float(ds.get("PixelPaddingRangeLimit", a))
    return (stored >= min(a, b)) & (stored <= max(a, b))


def read_frames(ds: Any, path: Path) -> list[tuple[np.ndarray, float | None, bool]]:
    """Frames of one dataset as ``(values (H, W) in physical units, slice position, inverted)``.

    ``inverted``: MONOCHROME1 (the minimum is displayed white); :func:`main` inverts those after
    windowing, as the standard's display pipeline does. Pixel padding takes the frame's smallest
    real value, so it sets neither the range nor the window. Raises :class:`UnreadableFile` naming
    ``path`` and the decoder when the pixel data cannot be decoded.
    """
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"{path} is a colour image (SamplesPerPixel={ds.SamplesPerPixel}); expected grey CT/MR")
    if "ModalityLUTSequence" in ds:
        raise ValueError(f"{path} has a non-linear Modality LUT, which this converter does not apply")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises RuntimeError, NotImplementedError or ValueError by version
        raise UnreadableFile(f"{path}: cannot decode its {_decoder_hint(ds)} ({type(err).__name__})") from None
    stored = pixels if pixels.ndim == 3 else pixels[None]
    inverted = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1"
    out = []
    for i, frame in enumerate(stored):
        slope, intercept = modality_transform(ds, i)
        value = frame.astype(np.float64) * slope + intercept
        pad = _padding(ds, frame)
        if pad is not None and pad.any() and not pad.all():
            value[pad] = value[~pad].min()
        out.append((value, slice_position(ds, i), inverted))
    return out


def read_slices(folder: Path, recursive: bool = False,
                skip_unreadable: bool = False) -> tuple[list[tuple[str, np.ndarray, bool]], list[Path]]:
    """All image slices under ``folder`` as ``(series_uid, (H, W) float64 array in physical units,
    inverted)``, grouped by series (in sorted UID order) and ordered within each series, and the
    files skipped as unreadable (``skip_unreadable``; otherwise the first one raises)."""
    pydicom = import_pydicom()
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder {str(folder)!r} does not exist")
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    entries, skipped = [], []
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            log.debug("skipping non-DICOM file %s", path)
            continue
        if "PixelData" not in ds:
            continue
        try:
            frames = read_frames(ds, path)
        except UnreadableFile as err:
            if not skip_unreadable:
                raise ValueError(f"{err}; or pass --skip-unreadable to leave such files out") from None
            log.warning("skipped %s", err)
            skipped.append(path)
            continue
        inst = ds.get("InstanceNumber")
        series = str(ds.get("SeriesInstanceUID", ""))
        for i, (value, pos, inverted) in enumerate(frames):
            key = (0, pos, path.name) if pos is not None else ((1, float(inst), path.name) if inst is not None
                                                               else (2, 0.0, path.name))
            entries.append((series, key, i, value, inverted))
    if not entries:
        raise ValueError(f"no DICOM image slices found in {str(folder)!r}"
                         + ("" if recursive else " (use --recursive for sub-folders)")
                         + (f"; {len(skipped)} unreadable files skipped" if skipped else ""))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    return [(series, frame, inverted) for series, _, _, frame, inverted in entries], skipped


def to_unit_range(volume: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map ``[low, high]`` (default: the volume's min and max) linearly to [0, 1], clipping outside."""
    low = float(volume.min()) if low is None else low
    high = float(volume.max()) if high is None else high
    if not high > low:
        raise ValueError(f"empty intensity range [{low}, {high}]; give --window or --range with high > low")
    return np.clip((volume - low) / (high - low), 0.0, 1.0)


def square_resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Centre-crop ``(N, 1, H, W)`` to a square of side ``min(H, W)``, then resize to ``size``."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[..., top:top + side, left:left + side]
    if size is None or size == side:
        return images
    mode = "area" if size < side else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(images, size=(size, size), mode=mode, **kwargs)


def assign_splits(series: Sequence[str], val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Indices of each split, contiguous in order: whole series when there are several, else slices."""
    uids = list(dict.fromkeys(series))
    units = uids if len(uids) > 1 else list(range(len(series)))
    n = len(units)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1:
        what = "series" if len(uids) > 1 else "slices"
        raise ValueError(f"{n} {what} leave no training data with val fraction {val_fraction} and test fraction "
                         f"{test_fraction}; lower the fractions")
    bounds = {"train": units[:n_train], "val": units[n_train:n_train + n_val], "test": units[n_train + n_val:]}
    if len(uids) > 1:
        return {s: np.array([i for i, u in enumerate(series) if u in set(b)], dtype=int) for s, b in bounds.items()}
    return {s: np.asarray(b, dtype=int) for s, b in bounds.items()}


def write_hdf5(out: Path, splits: dict[str, np.ndarray], key: str, attrs: dict[str, Any]) -> None:
    """Write non-empty splits as groups ``<split>/<key>``, atomically (temporary file + rename)."""
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(attrs)
        for split, arr in splits.items():
            if len(arr):
                f.create_dataset(f"{split}/{key}", data=arr.astype(np.float32))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Needs pydicom: pip install eqdeq[dicom]")
    p.add_argument("input", type=Path, help="folder of DICOM slice files")
    p.add_argument("output", type=Path, help="HDF5 file to write")
    p.add_argument("--recursive", action="store_true", help="also read DICOM files in sub-folders")
    win = p.add_mutually_exclusive_group()
    win.add_argument("--window", nargs=2, type=float, metavar=("CENTER", "WIDTH"),
                     help="intensity window in rescaled units (e.g. CT soft tissue: 40 400)")
    win.add_argument("--range", nargs=2, type=float, metavar=("LOW", "HIGH"),
                     help="intensity range mapped to [0, 1] (e.g. HU: -1000 1000)")
    p.add_argument("--size", type=int, default=None, help="output image side in pixels (default: keep)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction for validation (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="fraction for test (default 0.1)")
    p.add_argument("--key", default="x", help="image dataset name in each split group (default x)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="leave out files whose pixel data cannot be decoded (reported and counted)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("val_fraction", "test_fraction"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise SystemExit(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")
    if args.size is not None and args.size < 1:
        raise SystemExit(f"--size must be a positive integer, got {args.size}")
    try:
        slices, skipped = read_slices(args.input, args.recursive, args.skip_unreadable)
        shapes = {frame.shape for _, frame, _ in slices}
        if len(shapes) > 1:
            raise ValueError(f"slices have different sizes {sorted(shapes)}; convert one kind of series at a time")
        volume = np.stack([frame for _, frame, _ in slices])
        low = high = None
        if args.window is not None:
            low, high = args.window[0] - args.window[1] / 2, args.window[0] + args.window[1] / 2
        elif args.range is not None:
            low, high = args.range
        low = float(volume.min()) if low is None else low
        high = float(volume.max()) if high is None else high
        unit = to_unit_range(volume, low, high)
        inverted = np.array([inv for _, _, inv in slices])
        unit[inverted] = 1.0 - unit[inverted]  # MONOCHROME1: the minimum is white
        images = square_resize(torch.from_numpy(unit).float()[:, None], args.size).numpy()
        index = assign_splits([s for s, _, _ in slices], args.val_fraction, args.test_fraction)
    except (ImportError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    splits = {s: images[i] for s, i in index.items()}
    attrs = {"source": str(args.input), "low": low, "high": high, "size": images.shape[-1],
             "n_series": len({s for s, _, _ in slices}), "n_skipped": len(skipped)}
    write_hdf5(args.output, splits, args.key, attrs)
    log.info("wrote %s: %s, images %dx%d", args.output, {s: len(v) for s, v in splits.items()},
             images.shape[-1], images.shape[-1])
    if skipped:
        log.warning("skipped %d unreadable file(s) (see above)", len(skipped))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
