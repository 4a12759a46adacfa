"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file eqdeq writes for a user (checkpoints, ``metrics.json``, ``status.json``,
images, reconstructions, cached phantoms) goes through :func:`atomic_write`: the content
is written to a temporary file in the target's folder, flushed to disk (``fsync``) and
renamed over the target; on any error the temporary file is removed and the previous
file stays intact. The new file gets the permissions an ordinary ``open(path, "w")``
would give it (``0o666`` minus the umask), not ``mkstemp``'s private ``0o600``.

Reading: :func:`open_hdf5` opens an HDF5 file a user gave (data, masks), so that a file
in another format or a damaged one is reported in one line naming it by every reader.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    For writers that open the file themselves (``h5py.File(tmp, "w")``). The folder is
    created if needed. Raises whatever the body raises, after removing the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing (``mode`` ``"w"`` or ``"wb"``); it replaces ``path`` on success.

    Example::

        with atomic_write(run_dir / "metrics.json") as fh:
            json.dump(metrics, fh)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as fh:
        yield fh
        fh.flush()


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (non-finite floats as ``NaN`` / ``Infinity``;
    other objects by ``str``). Returns ``path``."""
    with atomic_write(path) as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")
    return Path(path)


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike, what: str) -> Iterator[Any]:
    """Open the HDF5 file ``path`` that a user gave, for reading: ``with open_hdf5(p, "HDF5
    data file") as f: ...`` yields the ``h5py.File``.

    Every failure is one message naming the file and ``what`` it is meant to be:
    ``FileNotFoundError`` when it does not exist, ``ValueError``
    when it is not an HDF5 file (another format, an empty file), cannot be read (permission)
    or is damaged (truncated: reading it fails while it is open, too).
    """
    import h5py

    name = str(Path(path))
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {name!r} does not exist")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{what} {name!r} cannot be read ({exc.strerror or exc})") from None
    if not h5py.is_hdf5(path):
        raise ValueError(f"{what} {name!r} is not an HDF5 file (no HDF5 signature)")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{what} {name!r} is a damaged HDF5 file ({exc})") from None
    with handle:
        try:
            yield handle
        except OSError as exc:  # h5py reports a damaged dataset as an OSError when it is read
            raise ValueError(f"{what} {name!r} is a damaged HDF5 file ({exc})") from None
