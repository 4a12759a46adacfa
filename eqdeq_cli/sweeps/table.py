"""The results table of a sweep (what ``eqdeq collect DIR`` writes).

A sweep directory (``hydra.sweep.dir`` of ``eqdeq train -m ...``, or the directory of an
array job from ``scripts/slurm/array_sweep.sbatch``) holds one directory per job, each
with the run output contract:

* ``.hydra/overrides.yaml`` — the job's command-line overrides (the swept values),
* ``.hydra/config.yaml`` — the composed config,
* ``metrics.json`` — the final evaluation (every numeric key is treated as a metric),
* optionally ``status.json`` — ``{"status": "running" | "completed" | "stopped" | "failed",
  "error": "..."}``, written by the runner.

Jobs are grouped by the swept override keys (all keys whose value differs between jobs,
except the seed), and further by any config key whose value differs between jobs with the
same overrides (:func:`config_leaves`: a default that changed between two versions of
eqdeq, or an edited config file, so runs of different experiments never share a row);
within a group every metric is summarised over the seeds by its mean and its sample
standard deviation

    mean = (1/n) Σ_i m_i,    std = sqrt( Σ_i (m_i − mean)² / (n − 1) ),

with ``std = 0`` in the CSV (and ``–`` in Markdown) when ``n = 1``. A job without a
readable ``metrics.json`` (still running, preempted, killed), with a failure marker, or whose
``status.json`` says ``running`` or ``stopped`` (a run trained further: its ``metrics.json`` is
the earlier model's) is counted under ``failures``; it does not stop the collection.

A job whose training the time cap (``trainer.max_minutes``) ended before ``trainer.max_steps``
counts as done, but is marked: a ``time_capped`` column (the number of such jobs in the group,
or the job's note in ``PREFIX_jobs.csv``) and a list under the Markdown table. These columns
appear only when some job was capped.

Outputs (``--out PREFIX``, default ``DIR/results``): ``PREFIX.csv`` (one row per group),
``PREFIX.md`` (the same as a Markdown table, followed by the list of failed jobs) and
``PREFIX_jobs.csv`` (one row per job). With ``--figure``, also the method comparison of
:mod:`eqdeq_cli.sweeps.compare`: ``PREFIX_comparison.md`` (PSNR/SSIM, time, iterations, the
``A†y`` baseline, analysis columns) and ``PREFIX_figure.png`` (reconstructions side by side).
Jobs analysed by ``eqdeq analyze`` contribute their ``analysis.json`` summary as ``an_*`` metrics.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..runs.resume import ADDED_KEY_CLASSES, ADDED_KEYS, RESUMABLE_KEYS, resolve_auto
from .jobs import JobResult, find_job_dirs, natural_key, read_group_choices, read_job

__all__ = ["Summary", "GroupRow", "SweepTable", "collect", "format_summary"]

#: Metrics listed first, in this order; any other numeric key follows alphabetically.
PREFERRED_METRICS: tuple[str, ...] = ("psnr", "ssim", "psnr_init", "ssim_init", "iters_mean")
#: Bookkeeping numbers of ``metrics.json``, kept in the CSV files but left out of the Markdown
#: table unless asked for (``n`` would also clash with the table's own job count).
BOOKKEEPING: tuple[str, ...] = ("n", "step", "steps", "best_val.step", "nonfinite")
#: Config keys that say where and how a job ran, logged and checkpointed, not what it computed
#: (the keys a run may change on resume, except its length): jobs differing only in these share a row.
RUN_ONLY_KEYS: tuple[str, ...] = tuple(
    k for k in RESUMABLE_KEYS if k not in ("trainer.max_steps", "trainer.max_minutes", "trainer.max_bad_steps"))


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of one metric over ``n`` jobs (``std`` is None when n = 1)."""

    mean: float
    std: float | None
    n: int


@dataclass(frozen=True)
class GroupRow:
    """One row of the results table: the values of the group keys, counts, summaries."""

    values: tuple[str, ...]
    n: int
    failures: int
    summaries: dict[str, Summary]
    #: Jobs of the group (among the ``n``) that the time cap stopped before ``max_steps``.
    time_capped: int = 0
    #: The jobs of the row (completed or not), in the order of :attr:`SweepTable.jobs`: a row key
    #: may come from the configs, so membership cannot be re-derived from the overrides.
    jobs: tuple[JobResult, ...] = field(default=(), repr=False)


@dataclass
class SweepTable:
    """The collected sweep: every job, and the jobs grouped by the swept keys."""

    sweep_dir: Path
    jobs: list[JobResult]
    group_keys: list[str]
    fixed: dict[str, str]
    metrics: list[str]
    rows: list[GroupRow] = field(default_factory=list)
    #: The metrics of the Markdown table (default: :attr:`metrics` without :data:`BOOKKEEPING`).
    shown: list[str] | None = None
    #: Group keys taken from the configs, not the overrides: keys whose value differs between
    #: jobs with the same overrides (a changed default, an edited config).
    config_keys: list[str] = field(default_factory=list)
    #: With ``group_by`` given: config keys whose value differs between jobs of one row.
    mixed_keys: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[JobResult]:
        return [j for j in self.jobs if j.status != "ok"]

    @property
    def time_capped(self) -> list[JobResult]:
        """The jobs whose training stopped at the time cap (their metrics are of fewer steps)."""
        return [j for j in self.jobs if j.time_cap]

    def write_csv(self, path: str | Path) -> None:
        """One row per group: group keys, ``n``, ``failures``, then ``<metric>_mean``, ``<metric>_std``."""
        capped = bool(self.time_capped)
        header = [*self.group_keys, "n", "failures", *(["time_capped"] if capped else [])]
        for m in self.metrics:
            header += [f"{m}_mean", f"{m}_std"]
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for row in self.rows:
                cells: list[Any] = [*row.values, row.n, row.failures, *([row.time_capped] if capped else [])]
                for m in self.metrics:
                    s = row.summaries.get(m)
                    if s is None:
                        cells += ["", ""]
                    else:
                        cells += [repr(s.mean), repr(s.std if s.std is not None else 0.0)]
                writer.writerow(cells)

    def write_jobs_csv(self, path: str | Path) -> None:
        """One row per job: path, status, every override key, seed, every metric, error."""
        keys: list[str] = []
        for job in self.jobs:
            keys += [k for k in job.overrides if k not in keys]
        capped = bool(self.time_capped)
        header = ["job", "status", *keys, *self.metrics, "error", *(["time_cap"] if capped else [])]
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for job in self.jobs:
                writer.writerow(
                    [job.path, job.status]
                    + [job.overrides.get(k, "") for k in keys]
                    + [repr(job.metrics[m]) if m in job.metrics else "" for m in self.metrics]
                    + [job.error or ""]
                    + ([job.time_cap or ""] if capped else [])
                )

    def to_markdown(self) -> str:
        """The table as Markdown: ``mean ± std`` per metric, fixed overrides and failures listed."""
        lines: list[str] = []
        if self.fixed:
            fixed = " ".join(f"`{k}={v}`" for k, v in self.fixed.items())
            lines += [f"Common overrides: {fixed}", ""]
        shown = self.metrics if self.shown is None else self.shown
        capped = ["time_capped"] if self.time_capped else []
        header = [*self.group_keys, "n", "failures", *capped, *shown]
        align = ["---"] * len(self.group_keys) + ["---:"] * (2 + len(capped) + len(shown))
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(align) + "|")
        for row in self.rows:
            cells = [*row.values, str(row.n), str(row.failures), *([str(row.time_capped)] if capped else [])]
            cells += [format_summary(row.summaries.get(m)) for m in shown]
            lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
        if self.config_keys:
            lines += ["", "Rows are also split by config keys that differ between jobs with the same overrides "
                      "(a default changed between the runs, or a config file was edited): "
                      + ", ".join(f"`{k}`" for k in self.config_keys) + "."]
        if self.mixed_keys:
            lines += ["", "Jobs in one row differ in config keys not grouped by: "
                      + ", ".join(f"`{k}`" for k in self.mixed_keys) + " (add them to --group-by to split the rows)."]
        lines += self.notes()
        return "\n".join(lines) + "\n"

    def notes(self) -> list[str]:
        """The Markdown lists under a table: failed or incomplete jobs, jobs stopped at the time cap."""
        lines: list[str] = []
        if self.failed:
            lines += ["", f"Failed or incomplete jobs ({len(self.failed)}):", ""]
            for job in self.failed:
                error = job.error or ""
                error = error[len(job.status) + 2:] if error.startswith(f"{job.status}: ") else error
                lines.append(f"- `{job.path}` ({job.status}): {error}")
        if self.time_capped:
            lines += ["", f"Stopped at the time cap, metrics of fewer steps ({len(self.time_capped)}):", ""]
            lines += [f"- `{job.path}`: {job.time_cap}" for job in self.time_capped]
        return lines


def format_summary(s: Summary | None) -> str:
    """``mean ± std`` with the mean rounded to the second significant digit of the std.

    ``28.3141 ± 0.1234`` → ``"28.31 ± 0.12"``; with one job ``"28.31 ± –"``; no value ``"–"``.
    """
    if s is None:
        return "–"
    if s.std is None or not math.isfinite(s.std) or not math.isfinite(s.mean):
        std = "–" if s.std is None else f"{s.std:.4g}"
        return f"{s.mean:.4g} ± {std}"
    if s.std == 0.0:
        return f"{s.mean:.4g} ± 0"
    decimals = min(6, max(0, 1 - math.floor(math.log10(s.std))))
    return f"{s.mean:.{decimals}f} ± {s.std:.{decimals}f}"


def collect(
    sweep_dir: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    group_by: Sequence[str] | None = None,
    seed_key: str = "seed",
) -> SweepTable:
    """Read every job under ``sweep_dir`` and group them into a :class:`SweepTable`.

    ``metrics``: the metric names to tabulate (default: every numeric key found).
    ``group_by``: the keys to group by (default: every override key whose value differs
    between jobs, except ``seed_key``, then every config key whose value differs between jobs
    with the same overrides, except :data:`RUN_ONLY_KEYS`: :attr:`SweepTable.config_keys`); a
    key that is not an override is looked up in the job's config by its dotted path
    (``physics.n_views``), and a key that names a config group (``grad``) by the option Hydra
    recorded in the job's ``.hydra/hydra.yaml``, so a group named on the command line and one
    left at that same default share a row. With ``group_by`` given, config keys that differ within a row are
    listed in :attr:`SweepTable.mixed_keys` instead.
    Raises ``FileNotFoundError`` when the directory is missing or holds no job, and
    ``KeyError`` for a metric or group key found in no job.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {root}")
    jobs = [read_job(d, root) for d in find_job_dirs(root)]
    if not jobs:
        raise FileNotFoundError(
            f"no jobs found under {root}: expected directories holding .hydra/overrides.yaml "
            "or metrics.json (the hydra.sweep.dir of an `eqdeq train -m ...` run)"
        )

    found = _ordered_metrics({k for j in jobs for k in j.metrics})
    if metrics is None:
        chosen = found
    else:
        chosen = list(metrics)
        unknown = [m for m in chosen if m not in found]
        if unknown:
            failed = sum(1 for j in jobs if j.status != "ok")
            note = f" ({failed} of {len(jobs)} jobs failed or incomplete: their metrics are not read)" if failed else ""
            raise KeyError(f"metric(s) {unknown} not found in any metrics.json; available: {found}{note}")

    read_choices: dict[str, dict[str, str]] = {}

    def choices(job: JobResult) -> dict[str, str]:
        """The job's config group options, read once and only for keys that name a group."""
        if job.path not in read_choices:
            read_choices[job.path] = read_group_choices(root / job.path)
        return read_choices[job.path]

    override_keys: list[str] = []
    for job in jobs:
        override_keys += [k for k in job.overrides if k not in override_keys]
    varying = [k for k in override_keys if len({j.overrides.get(k) for j in jobs}) > 1]
    fixed = {
        k: jobs[0].overrides[k]
        for k in override_keys
        if k not in varying and k != seed_key and k in jobs[0].overrides
    }
    if group_by is None:
        keys = [k for k in varying if k != seed_key]
    else:
        keys = list(group_by)
        for k in keys:
            if not any(_lookup(j, k, choices) is not None for j in jobs):
                raise KeyError(
                    f"group key {k!r} is neither an override nor a config key of any job; "
                    f"overrides found: {override_keys}"
                )
        fixed = {k: v for k, v in fixed.items() if k not in keys}

    shown = chosen if metrics is not None else [m for m in chosen if m not in BOOKKEEPING]
    leaves = [config_leaves(job.config) for job in jobs]
    from_configs: set[str] = set()

    def value(i: int, key: str) -> str:
        """The override, else the config value (as compared: :func:`config_leaves`)."""
        found = jobs[i].overrides.get(key)
        if found is None and key not in from_configs:
            found = _lookup(jobs[i], key, choices)
        if found is None:
            found = leaves[i].get(key)
        return "" if found is None else found

    def grouped(by: list[str]) -> dict[tuple[str, ...], list[int]]:
        out: dict[tuple[str, ...], list[int]] = {}
        for i in range(len(jobs)):
            out.setdefault(tuple(value(i, k) for k in by), []).append(i)
        return out

    differing = _differing_config_keys(grouped(keys).values(), leaves, skip={*keys, seed_key})
    config_keys, mixed_keys = (differing, []) if group_by is None else ([], differing)
    from_configs.update(config_keys)
    keys += config_keys
    table = SweepTable(sweep_dir=root, jobs=jobs, group_keys=keys, fixed=fixed, metrics=chosen, shown=shown,
                       config_keys=config_keys, mixed_keys=mixed_keys)
    groups = {k: [jobs[i] for i in members] for k, members in grouped(keys).items()}
    for row_values in sorted(groups, key=lambda t: tuple(natural_key(v) for v in t)):
        members = groups[row_values]
        ok = [j for j in members if j.status == "ok"]
        summaries = {}
        for m in chosen:
            vals = [j.metrics[m] for j in ok if m in j.metrics]
            if vals:
                summaries[m] = _summarise(vals)
        table.rows.append(
            GroupRow(values=row_values, n=len(ok), failures=len(members) - len(ok), summaries=summaries,
                     time_capped=sum(1 for j in ok if j.time_cap), jobs=tuple(members))
        )
    return table


def config_leaves(config: Any) -> dict[str, str]:
    """A job's composed config as ``{dotted key: value}`` (values as JSON text, strings as
    they are), the way two runs' settings are compared: a key added to eqdeq after the run
    counts at the value that gives the run's behaviour (:data:`~eqdeq_cli.runs.resume.ADDED_KEYS`)
    and ``auto`` preconditioning as what it means under the run's physics. ``{}`` for a job
    without a config."""
    if not isinstance(config, dict) or not config:
        return {}
    config = copy.deepcopy(config)
    for key, default in ADDED_KEYS.items():
        *parents, leaf = key.split(".")
        node: Any = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node \
                and ADDED_KEY_CLASSES.get(key, node.get("_target_")) == node.get("_target_"):
            node[leaf] = default
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, sub in node.items():
                walk(sub, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = node if isinstance(node, str) else json.dumps(node)

    walk(resolve_auto(config), "")
    return out


def _differing_config_keys(groups: Any, leaves: list[dict[str, str]], skip: set[str]) -> list[str]:
    """Config keys (in first-seen order) whose value differs between two jobs of one group,
    leaving out ``skip`` and :data:`RUN_ONLY_KEYS`; jobs without a config are not compared."""
    found: list[str] = []
    for members in groups:
        have = [leaves[i] for i in members if leaves[i]]
        for key in dict.fromkeys(k for leaf in have for k in leaf):
            if key in found or key in skip or any(key == r or key.startswith(f"{r}.") for r in RUN_ONLY_KEYS):
                continue
            if len({leaf.get(key) for leaf in have}) > 1:
                found.append(key)
    return found


def _summarise(vals: list[float]) -> Summary:
    """Mean and sample std; a non-finite value (a metric that could not be measured) makes
    the mean NaN and the std undefined, rather than hiding the job."""
    if not all(math.isfinite(v) for v in vals):
        return Summary(mean=float("nan"), std=None, n=len(vals))
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return Summary(mean=statistics.fmean(vals), std=std, n=len(vals))


def _ordered_metrics(names: set[str]) -> list[str]:
    first = [m for m in PREFERRED_METRICS if m in names]
    return first + sorted(names - set(first))


def _lookup(job: JobResult, key: str, choices: Callable[[JobResult], dict[str, str]] | None = None) -> str | None:
    """The job's value of ``key``: its override, else the dotted path in its config (as JSON
    text unless a string; ``None`` when absent). For a key that names a config group (its config
    node is a mapping, or absent: ``trainer/optimizer``, ``experiment``), the option the job was
    composed with, ``choices(job)`` (:func:`~eqdeq_cli.sweeps.jobs.read_group_choices`), comes
    before the config: ``grad=implicit`` typed and ``grad`` left at its default ``implicit``
    read the same. Jobs without a recorded choice keep the config's value, and so do jobs whose
    recorded choice does not describe the node: an evaluation (its ``hydra.yaml`` holds the eval
    command's defaults, not the evaluated model's) and a job that overrides a key inside the
    group (``grad.mode=jfb`` leaves the choice ``implicit``)."""
    if key in job.overrides:
        return job.overrides[key]
    dotted = key.replace("/", ".")  # a nested group: trainer/optimizer is the node trainer.optimizer
    node: Any = job.config
    found = True
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            found = False
            break
        node = node[part]
    describes = job.config.get("task") != "eval" and not any(k.startswith(f"{dotted}.") for k in job.overrides)
    if choices is not None and describes and (not found or isinstance(node, dict)):
        chosen = choices(job).get(dotted.replace(".", "/"))
        if chosen is not None:
            return chosen
    if not found:
        return None
    return node if isinstance(node, str) else json.dumps(node)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")
