"""What every Hydra command shares: its command line, and one failure policy.

:func:`run_app` hands ``argv`` to a Hydra app (so ``--help``, ``--cfg job``, ``-m`` and
``-sc`` work as in any Hydra app) and turns its exit into a status code.

:func:`hydra_task` wraps a command's job function ``body(cfg, job) -> value`` with the
failure policy, written once:

* a user error (bad value, missing file, size mismatch, missing checkpoint) is logged as
  one line on stderr, its traceback goes to the run's log file only, exit code 1;
* in a multirun, a failed job is logged (a user error as one line on the console, its
  traceback in the job's log file; any other error with its traceback), recorded in the
  job's ``status.json`` (when the command records one and has claimed the directory) and
  in memory (:func:`~eqdeq_cli.sweeps.callback.record_failure`), and the sweep goes on;
  :class:`~eqdeq_cli.sweeps.callback.SweepFailureReport` lists the failures at its end and
  exits 1. A job refused to continue a job with other overrides in its directory gets a
  sentence on the cause (:func:`other_sweep_hint`).

A command that records a status (train, eval) refuses a directory holding a run of
another command (:func:`refuse_run_of_another_command`: ``eqdeq eval
hydra.run.dir=<training run>``), then holds its run directory
(:func:`~eqdeq_cli.runs.directory.hold_run_dir`; refused: one line, exit 1, nothing
written), then claims it (:meth:`Job.claim`): writes ``.hydra/`` there
(:func:`save_hydra_files`) and ``status.json`` ``running``. A command that runs another
config than its composed one (eval runs the checkpoint's) writes that one as
``.hydra/config.yaml`` (:meth:`Job.record_config`) and its composed one as
``.hydra/command.yaml``. A command that may continue a
run already in the directory (train) claims such a directory only once it has accepted it
(same experiment, readable checkpoint); until then nothing of that run is rewritten, so a
refused or failed attempt leaves its ``.hydra/`` and ``status.json`` (``completed``,
``stopped``) as they were. A second Ctrl-C (``KeyboardInterrupt``) records ``stopped``
with ``aborted: true`` in a claimed directory and exits with 130 after one line.

:class:`WritableRunDirectory`, a Hydra callback of ``configs/hydra/default.yaml``, checks
that the run (or sweep) directory can be written before Hydra creates it or opens the log
there: a read-only file system or a missing permission is one line and exit 1.
"""
from __future__ import annotations

import functools
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .. import CONFIG_DIR
from ..errors import UserError

log = logging.getLogger(__name__)

#: Where a job's composed config, Hydra config and overrides go (Hydra's default name).
HYDRA_SUBDIR = ".hydra"
#: The config a job ran with, in :data:`HYDRA_SUBDIR` (what ``eqdeq collect`` reads).
CONFIG_FILE = "config.yaml"
#: The composed command config of a job that runs another one (eval: the checkpoint's config).
COMMAND_CONFIG = "command.yaml"
#: A directory holding this folder and no ``status.json`` (a run of an older version) holds a training run.
CHECKPOINTS = "checkpoints"


class RunOfAnotherCommand(UserError):
    """The run directory holds a run of another command (``eqdeq eval`` into a training run's)."""


def held_task(run_dir: Path) -> str | None:
    """The command whose run ``run_dir`` holds: the ``task`` of its ``status.json``, else
    ``train`` when it has ``checkpoints/``, else the ``task`` of its ``.hydra/config.yaml`` when
    it has results (``metrics.json``: a run of an older version whose checkpoints were removed);
    ``None`` for a directory holding none of these."""
    import yaml

    from ..runs.status import read_status

    status = read_status(run_dir)
    if isinstance(status, dict) and status.get("task"):
        return str(status["task"])
    if (run_dir / CHECKPOINTS).is_dir():
        return "train"
    if (run_dir / "metrics.json").is_file():
        try:
            saved = yaml.safe_load((run_dir / HYDRA_SUBDIR / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return None
        task = saved.get("task") if isinstance(saved, dict) else None
        return str(task) if task else None
    return None


def refuse_run_of_another_command(job: "Job") -> None:
    """Raises :class:`RunOfAnotherCommand` (nothing written) when ``job.run_dir`` holds a run of
    another command, whose results (``metrics.json``, ``.hydra/``, images) the job would replace.
    The message names the directory, both commands and where ``eqdeq <task>`` writes by default."""
    held = held_task(job.run_dir)
    if held is None or held == job.task:
        return
    key, default = (("hydra.sweep.dir", f"outputs/{job.task}/multirun/<date>_<time>") if job.multirun
                    else ("hydra.run.dir", f"outputs/{job.task}/<date>_<time>"))
    raise RunOfAnotherCommand(f"{job.run_dir} holds an eqdeq {held} run, whose results eqdeq {job.task} would "
                              f"overwrite: leave {key} out (eqdeq {job.task} writes to {default} by default) or "
                              "choose a new directory")


def held_overrides(run_dir: Path) -> list[Any] | None:
    """The command-line overrides of the job ``run_dir`` holds, as Hydra wrote them in
    ``.hydra/overrides.yaml``; ``None`` when there is no such file or it cannot be read."""
    import yaml

    try:
        held = yaml.safe_load((run_dir / HYDRA_SUBDIR / "overrides.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return held if isinstance(held, list) else None


def other_sweep_hint(job: "Job") -> str:
    """In a multirun, the sentence added to a refusal of a job directory that holds a job with
    other overrides: job directories are numbered from 0 in every sweep, so a second sweep into
    the same ``hydra.sweep.dir`` lands on the first one's jobs. ``""`` when the held job has the
    same overrides (then the refusal's own advice holds) or outside a multirun."""
    if not job.multirun:
        return ""
    held = held_overrides(job.run_dir)
    if held is not None and sorted(map(str, held)) == sorted(job.overrides):
        return ""
    which = f" ({' '.join(map(str, held))})" if held else ""
    return (f". {job.run_dir} holds another job{which} of an earlier sweep: use a new hydra.sweep.dir, or "
            "hydra.sweep.subdir='${hydra.job.override_dirname}' to name job directories by their overrides")


def refuse_other_evaluation(job: "Job") -> None:
    """Raises :class:`RunOfAnotherCommand` (nothing written) when ``job.run_dir`` holds a run
    of the same command made with other overrides (``eqdeq eval ckpt=B`` into the directory of
    ``eqdeq eval ckpt=A``), whose results the job would replace. For commands whose runs are
    quick to make again and have no checkpoint to resume (eval); the same command again passes."""
    from ..sweeps.jobs import parse_overrides

    if held_task(job.run_dir) != job.task:
        return
    try:
        held = parse_overrides(held_overrides(job.run_dir))
    except ValueError:  # no readable overrides.yaml
        return
    if held == parse_overrides(list(job.overrides)):
        return
    shown = " ".join(f"{k}={v}" for k, v in held.items()) or "no overrides"
    key = "hydra.sweep.dir" if job.multirun else "hydra.run.dir"
    raise RunOfAnotherCommand(f"{job.run_dir} holds another eqdeq {job.task} run ({shown}), whose results this one "
                              f"would replace: leave {key} out or choose a new directory")


class JobOfAnotherSweep(UserError):
    """A sweep's job directory holds a job of an earlier sweep with another value of a swept key."""


def multirun_record(sweep_dir: Path) -> dict[str, Any] | None:
    """The ``hydra`` node of the ``multirun.yaml`` Hydra wrote in ``sweep_dir``, which records
    the sweep's command-line overrides (``overrides.task``) and its sweeper; ``None`` when there
    is none, it cannot be read, or it lacks ``hydra.overrides.task``."""
    import yaml

    try:
        hydra = yaml.safe_load((sweep_dir / "multirun.yaml").read_text(encoding="utf-8"))["hydra"]
        hydra["overrides"]["task"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return hydra if isinstance(hydra, dict) else None


def swept_keys(sweep_dir: Path) -> list[str]:
    """The keys the multirun writing into ``sweep_dir`` sweeps: those of the command line
    (``seed=0,1``, ``lr=range(...)``) and of the sweeper's search space (``hydra.sweeper.params``,
    the Optuna presets), read from Hydra's ``multirun.yaml`` there (:func:`multirun_record`);
    ``[]`` when it cannot be read."""
    hydra = multirun_record(sweep_dir)
    if hydra is None:  # no multirun.yaml, or an unreadable one: no check
        return []
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides([str(item) for item in hydra["overrides"]["task"]])
    except Exception:  # overrides Hydra cannot read: no check, as before
        return []
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    params = (hydra.get("sweeper") or {}).get("params") or {}
    return keys + [str(k) for k in params if str(k) not in keys] if isinstance(params, dict) else keys


def refuse_job_of_another_sweep(job: "Job", sweep_dir: Path) -> None:
    """Raises :class:`JobOfAnotherSweep` (nothing written) when ``job.run_dir``, a job directory
    of a multirun, holds a job whose overrides give a swept key of this sweep another value.
    Job directories are numbered from 0 in every sweep, so a second sweep into the same
    ``hydra.sweep.dir`` lands on the first sweep's jobs; one that differs only in a key a run
    may change on resume (``trainer.max_steps=2,3`` then ``3,4``) would otherwise continue
    the other job's run and replace its results. The same sweep run again (with, say, a longer
    ``trainer.max_steps`` for every job) passes."""
    from ..sweeps.jobs import parse_overrides

    try:
        held = parse_overrides(held_overrides(job.run_dir))
    except ValueError:  # no readable overrides.yaml
        return
    now = parse_overrides(list(job.overrides))
    changed = [k for k in swept_keys(sweep_dir) if held.get(k) != now.get(k)]
    if not changed:
        return
    show = ", ".join(f"{k}={held.get(k, '(default)')}" for k in changed)
    mine = ", ".join(f"{k}={now.get(k, '(default)')}" for k in changed)
    raise JobOfAnotherSweep(f"{job.run_dir} holds a job of an earlier sweep ({show}), not this one ({mine}): job "
                            "directories are numbered from 0 in every sweep; use a new hydra.sweep.dir, or "
                            "hydra.sweep.subdir='${hydra.job.override_dirname}' to name job directories by their "
                            "overrides")


@dataclass
class Job:
    """One job of a Hydra command: where it writes, how it was called, who it runs with."""

    run_dir: Path
    overrides: list[str]
    multirun: bool
    task: str
    record_status: bool
    dist: Any = None
    started: float = field(default_factory=time.time)
    #: Called after the job has released its processes, e.g. to exit with a stop code.
    finish: Callable[[], None] | None = None
    #: The run directory's lock file while this job holds it (rank 0 of commands with a status).
    lock: Any = None
    #: The composed config (written to ``.hydra/`` by :meth:`claim`).
    cfg: Any = None
    #: Whether this job writes the directory's ``.hydra/`` and ``status.json`` (see :meth:`claim`).
    claimed: bool = False
    #: The body runs a config of its own (eval: the checkpoint's), written by :meth:`record_config`;
    #: the composed command config then goes to ``.hydra/command.yaml``.
    runs_saved_config: bool = False

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def elapsed(self) -> float:
        return round(time.time() - self.started, 3)

    def claim(self) -> None:
        """Take the run directory as this job's: write ``.hydra/`` and ``status.json`` ``running``
        (rank 0, for commands that record a status). Until then :meth:`record` writes nothing."""
        if self.claimed:
            return
        self.claimed = True
        if self.record_status and self.is_main:
            save_hydra_files(self.cfg, self.run_dir,
                             config_file=COMMAND_CONFIG if self.runs_saved_config else CONFIG_FILE)
        self.record("running")

    def record_config(self, run_cfg: DictConfig) -> None:
        """Write ``run_cfg``, the config the job runs, as ``.hydra/config.yaml`` (rank 0, once
        claimed), where ``eqdeq collect`` reads a job's settings; for a command whose composed
        config is not the one that runs (``runs_saved_config``)."""
        if self.record_status and self.is_main and self.claimed:
            from omegaconf import OmegaConf

            from ..utils.files import atomic_write

            with atomic_write(self.run_dir / HYDRA_SUBDIR / CONFIG_FILE, encoding="utf-8") as fh:
                fh.write(OmegaConf.to_yaml(run_cfg))

    def record(self, status: str, **fields: Any) -> None:
        """Write ``status.json`` (rank 0, for commands that own their run directory, once claimed)."""
        if self.record_status and self.is_main and self.claimed:
            from ..runs.status import write_status

            write_status(self.run_dir, status, task=self.task, overrides=self.overrides, **fields)


def hydra_task(*, record_status: bool = True, join_processes: bool = True, claim_in_body: bool = False,
               runs_saved_config: bool = False
               ) -> Callable[[Callable[[DictConfig, Job], Any]], Callable[[DictConfig], Any]]:
    """Decorate ``body(cfg, job)`` into a Hydra task function with the failure policy.

    ``record_status``: write ``status.json`` (``running``, then ``failed`` on an error;
    the body records how it ended). ``join_processes``: join a torchrun / srun launch
    (:func:`~eqdeq_cli.runs.processes.start_processes`) and leave it at the end.
    ``claim_in_body``: in a directory that already holds a run
    (:func:`~eqdeq_cli.runs.directory.holds_run`), the body calls ``job.claim()`` once it has
    accepted it; a fresh directory is claimed before the body runs. ``runs_saved_config``:
    the body runs another config than the composed one (eval: the checkpoint's) and writes it
    with ``job.record_config``; the composed one is kept as ``.hydra/command.yaml``.

    A command that records a status refuses, before writing anything there, a directory
    holding a run of another command (:func:`refuse_run_of_another_command`).
    """

    def wrap(body: Callable[[DictConfig, Job], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(body)
        def task(cfg: DictConfig) -> Any:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            from ..errors import user_error_message
            from ..runs.directory import hold_run_dir, holds_run

            hc = HydraConfig.get()
            job = Job(run_dir=Path(hc.runtime.output_dir), overrides=list(hc.overrides.task),
                      multirun=hc.mode == RunMode.MULTIRUN, task=str(cfg.get("task", hc.job.name)),
                      record_status=record_status, cfg=cfg, runs_saved_config=runs_saved_config)
            clean = False
            try:
                if join_processes:
                    from ..runs.processes import start_processes

                    job.dist, job.run_dir = start_processes(cfg, job.run_dir)
                if record_status:
                    refuse_run_of_another_command(job)
                    if runs_saved_config:
                        refuse_other_evaluation(job)
                    if job.multirun:
                        refuse_job_of_another_sweep(job, Path(hc.sweep.dir))
                if record_status and job.is_main:
                    job.lock = hold_run_dir(job.run_dir)  # refused: another run's files stay untouched
                if not (claim_in_body and holds_run(job.run_dir)):
                    job.claim()
                value = body(cfg, job)
                clean = True
            except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint written stays
                job.record("stopped", signal="SIGINT", aborted=True, elapsed_s=job.elapsed())
                log.error("aborted by a second Ctrl-C: run the same command again to resume from the last "
                          "checkpoint written in %s", job.run_dir)
                raise SystemExit(130) from None
            except Exception as exc:
                from ..runs.resume import ResumeRefused
                from ..sweeps.callback import record_failure

                message = user_error_message(exc)
                if message is not None and isinstance(exc, ResumeRefused):
                    message += other_sweep_hint(job)
                error = message or f"{type(exc).__name__}: {exc}"
                job.record("failed", error=error, elapsed_s=job.elapsed())
                if job.multirun:
                    if job.is_main:  # also when the directory was refused: nothing recorded there
                        record_failure(job.run_dir, error)
                    if message is None:  # a bug: its traceback on the console too
                        log.error("job %s failed: %r", job.run_dir, exc, exc_info=True)
                    else:  # the user's to fix: one line on the console, the traceback in the log file
                        log.error("job %s failed: %s", job.run_dir, message, exc_info=True, extra={"file_only": True})
                        log.error("job %s failed: %s", job.run_dir, message, extra={"console_only": True})
                    return None
                if message is not None:
                    log.error("%s", message, exc_info=True, extra={"file_only": True})
                    log.error("%s", message, extra={"console_only": True})
                    raise SystemExit(1) from None
                raise
            finally:
                if job.dist is not None:
                    from ..engine.distributed import shutdown_distributed

                    shutdown_distributed(job.dist, wait=clean)
                if job.lock is not None:
                    job.lock.close()
            if job.finish is not None:
                job.finish()
            return value

        return task

    return wrap


def save_hydra_files(cfg: DictConfig, run_dir: Path, config_file: str = CONFIG_FILE) -> None:
    """Write ``.hydra/config.yaml`` (the composed config; ``config_file`` names it otherwise),
    ``hydra.yaml`` and ``overrides.yaml`` as Hydra would.

    ``hydra.output_subdir`` is null in ``configs/hydra/default.yaml`` for the commands that
    lock their run directory: Hydra writes these files before any of our code runs, so it
    would overwrite a running run's; they are written here once the directory is held.
    """
    import copy

    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
    with read_write(hydra_cfg.hydra), open_dict(hydra_cfg.hydra):
        hydra_cfg.hydra.output_subdir = HYDRA_SUBDIR
    out = run_dir / HYDRA_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    for name, node in ((config_file, cfg), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", hydra_cfg.hydra.overrides.task)):
        (out / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")


def keep_earlier_sweep_record(sweep_dir: Path, overrides: list[str]) -> Path | None:
    """Before a multirun into ``sweep_dir`` writes its ``multirun.yaml``, move the one an earlier
    sweep with other command-line overrides left there to ``multirun.<its time>.yaml``, so the
    record of that sweep stays beside its jobs; returns the new path (``None``: nothing moved,
    the same sweep run again, or no readable earlier record)."""
    import datetime

    hydra = multirun_record(sweep_dir)
    if hydra is None:
        return None
    path = sweep_dir / "multirun.yaml"
    if sorted(map(str, hydra["overrides"]["task"] or [])) == sorted(map(str, overrides)):
        return None
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d_%H-%M-%S")
    kept = sweep_dir / f"multirun.{stamp}.yaml"
    path.replace(kept)
    return kept


class WritableRunDirectory(Callback):
    """Hydra callback: before Hydra creates the run (or sweep) directory and opens its log file,
    check that it can be written; if not, one line on stderr and exit 1."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")
        keep_earlier_sweep_record(Path(str(config.hydra.sweep.dir)), list(config.hydra.overrides.task))

    @staticmethod
    def _check(path: str, key: str) -> None:
        from ..runs.directory import check_writable

        try:
            check_writable(Path(str(path)), key)
        except UserError as exc:
            print(f"[{time.strftime('%H:%M:%S')}][ERROR] {exc}", file=sys.stderr)
            raise SystemExit(1) from None


def null_group_override(argv: Sequence[str]) -> str | None:
    """The error for an override that sets a config group to ``null`` (``regularizer=null``),
    which Hydra rejects with a traceback; ``None`` when there is none. The message lists the
    group's options."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+~")
        if not sep or value.strip() != "null" or not group or not (CONFIG_DIR / group).is_dir():
            continue
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        hint = f"; {group}=none removes it" if "none" in options else ""
        return (f"{arg}: {group} is a config group, set by the name of one of its options "
                f"({', '.join(options)}){hint}")
    return None


def run_app(config_name: str, task: Callable[[DictConfig], Any], argv: Sequence[str], prog: str) -> int:
    """Run ``task`` as the Hydra app of ``configs/<config_name>.yaml`` on the command line ``argv``.

    Returns the exit status: 0, or the code of the ``SystemExit`` the app raised.
    """
    import hydra

    from ..runs.directory import register_resolvers

    register_resolvers()  # before Hydra composes: hydra.run.dir and hydra.sweep.dir use them
    message = null_group_override(argv)
    if message:
        sys.stderr.write(f"{prog}: error: {message}\n")
        return 1
    app = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        app()
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    finally:
        sys.argv = saved
    return 0
