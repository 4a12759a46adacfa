"""A run directory belongs to one run: unique names, and a lock held while the run writes.

:func:`run_stamp` is the ``${eqdeq_run_stamp:}`` resolver of ``hydra.run.dir`` and
``hydra.sweep.dir``: ``<date>_<time>.<microseconds>-p<pid>``, so two runs started in the
same second (or two sweeps) get different directories, which still sort by start time.
Under ``torchrun`` / ``srun`` every rank must name the same directory, so the suffix is
the launch's id instead of the process's.

:func:`hold_run_dir` takes ``<run dir>/.lock`` (``fcntl.flock``) for as long as the run
writes there; the operating system releases it when the process ends, however it ends,
so a crashed run never leaves its directory locked. Standard library only: ``eqdeq
train --help`` resolves no directory but imports this module.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import IO, Mapping

from ..errors import UserError

LOCK_FILE = ".lock"
#: What a run leaves in its directory; a directory holding any of them holds a run.
RUN_MARKERS = (".hydra", "status.json", "metrics.json", "checkpoints")
RESOLVER = "eqdeq_run_stamp"


def launch_id(env: Mapping[str, str] | None = None) -> str | None:
    """An id shared by every process of a torchrun / srun launch, or ``None`` when alone."""
    env = os.environ if env is None else env
    if env.get("TORCHELASTIC_RUN_ID") not in (None, "", "none"):
        return f"r{env['TORCHELASTIC_RUN_ID']}"
    if "RANK" in env and "WORLD_SIZE" in env and env.get("MASTER_PORT"):
        return f"{env.get('MASTER_ADDR', '')}-{env['MASTER_PORT']}"
    if env.get("SLURM_JOB_ID") and env.get("SLURM_NTASKS", "1") != "1":
        return f"j{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    return None


def run_stamp(now: datetime.datetime | None = None, pid: int | None = None,
              env: Mapping[str, str] | None = None) -> str:
    """``2026-11-29_22-57-44.123456-p4321``: start time to the microsecond, then the process id.

    In a launch of several processes: ``2026-11-29_22-57-44-<launch id>`` (the ranks agree on
    it, and rank 0's directory is used should their clocks straddle a second).
    """
    now = now or datetime.datetime.now()
    shared = launch_id(env)
    if shared is not None:
        return f"{now:%Y-%m-%d_%H-%M-%S}-{shared.replace('/', '_')}"
    return f"{now:%Y-%m-%d_%H-%M-%S.%f}-p{os.getpid() if pid is None else pid}"


def register_resolvers() -> None:
    """Register ``${eqdeq_run_stamp:}`` (cached per config, so a sweep's jobs share its stamp)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(RESOLVER, lambda: run_stamp(), use_cache=True, replace=True)


def holds_run(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds (part of) a run: any of :data:`RUN_MARKERS`."""
    return any((Path(run_dir) / name).exists() for name in RUN_MARKERS)


class RunDirectoryNotWritable(UserError):
    """The run directory cannot be created or written (read-only file system, permissions)."""


def check_writable(run_dir: str | os.PathLike, key: str = "hydra.run.dir") -> None:
    """Create ``run_dir`` if needed and write (then remove) a file in it.

    Raises :class:`RunDirectoryNotWritable` naming the directory, the reason (``Read-only file
    system``, ``Permission denied``, ...) and ``key``, the setting that chooses it.
    """
    run_dir = Path(run_dir)
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise RunDirectoryNotWritable(f"cannot write in the run directory {run_dir} ({reason}): choose a writable "
                                      f"{key}") from None


class RunDirectoryInUse(UserError):
    """Another process holds the run directory's lock."""


def lock_is_held(run_dir: str | os.PathLike) -> bool | None:
    """Whether a process holds ``run_dir``'s lock now: ``True``, ``False``, or ``None`` when it
    cannot be told (no lock file: a run of an older version, or one that never started; a file
    system without ``flock``). Takes a shared lock for an instant; changes nothing."""
    import fcntl

    try:
        handle = open(Path(run_dir) / LOCK_FILE)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def hold_run_dir(run_dir: str | os.PathLike) -> IO[str]:
    """Lock ``run_dir`` for this process; returns the lock file (closing it releases the lock).

    Raises :class:`RunDirectoryInUse` naming the directory and the process holding it.
    Nothing in the directory is changed when it is refused.
    """
    import fcntl

    run_dir = Path(run_dir)
    check_writable(run_dir)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirectoryInUse(f"{run_dir} is in use by another run (PID {holder}): wait for it to end, "
                                "or choose another hydra.run.dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
