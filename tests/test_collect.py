"""The sweep collector: reads fake sweeps laid out exactly as Hydra writes them."""
from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import matplotlib.image
import pytest
import torch
from omegaconf import OmegaConf

from eqdeq_cli.commands.collect import main
from eqdeq_cli.engine.images import save_reconstructions_h5
from eqdeq_cli.sweeps import compare
from eqdeq_cli.sweeps import jobs as collect_mod
from eqdeq_cli.sweeps.table import Summary, collect, format_summary

PSNR = {  # (grad, seed) -> psnr
    ("implicit", 0): 28.10,
    ("implicit", 1): 28.50,
    ("implicit", 2): 28.60,
    ("jfb", 0): 27.00,
    ("jfb", 1): 27.40,
    ("jfb", 2): 27.30,
}


def write_job(
    job_dir: Path,
    overrides: list[str],
    metrics: dict | None,
    status: dict | None = None,
    config: dict | None = None,
) -> None:
    """A job directory in Hydra's layout: .hydra/{overrides,config}.yaml, metrics.json, status.json."""
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job_dir / ".hydra" / "overrides.yaml")
    cfg = config or {"seed": 0, "physics": {"_target_": "eqdeq_cli.physics.CTRadon", "views": 30}}
    OmegaConf.save(OmegaConf.create(cfg), job_dir / ".hydra" / "config.yaml")
    if metrics is not None:
        (job_dir / "metrics.json").write_text(json.dumps(metrics))
    if status is not None:
        (job_dir / "status.json").write_text(json.dumps(status))


def make_sweep(root: Path, *, fail_jfb_seed2: bool = False) -> Path:
    """`eqdeq train -m debug=smoke grad=implicit,jfb seed=0,1,2` with numbered job dirs."""
    (root / ".submitit" / "123_0").mkdir(parents=True)  # submitit's folder must be ignored
    OmegaConf.save(OmegaConf.create({"hydra": {"mode": "MULTIRUN"}}), root / "multirun.yaml")
    for num, ((grad, seed), psnr) in enumerate(PSNR.items()):
        overrides = ["debug=smoke", f"grad={grad}", f"seed={seed}"]
        metrics = {
            "psnr": psnr,
            "ssim": 0.8 + 0.01 * seed,
            "psnr_init": 25.0,
            "ssim_init": 0.7,
            "iters_mean": 12 + seed,
            "train_seconds": 3.5,
            "steps": 2,
            "converged": True,  # booleans are not metrics
            "solver": {"residual": 1e-3 * (seed + 1)},  # nested keys are flattened
            "note": "text is ignored",
        }
        if fail_jfb_seed2 and (grad, seed) == ("jfb", 2):
            write_job(root / str(num), overrides, None, {"status": "failed", "error": "RuntimeError: boom"})
        else:
            write_job(root / str(num), overrides, metrics)
    return root


def test_mean_and_std_over_seeds(tmp_path: Path) -> None:
    table = collect(make_sweep(tmp_path))
    assert table.group_keys == ["grad"]
    assert table.fixed == {"debug": "smoke"}
    assert [r.values for r in table.rows] == [("implicit",), ("jfb",)]
    for row in table.rows:
        vals = [p for (g, _), p in PSNR.items() if g == row.values[0]]
        s = row.summaries["psnr"]
        assert s.n == row.n == 3 and row.failures == 0
        assert s.mean == pytest.approx(statistics.fmean(vals), abs=1e-12)
        assert s.std == pytest.approx(statistics.stdev(vals), abs=1e-12)  # sample std (n - 1)
    assert table.rows[0].summaries["iters_mean"].mean == pytest.approx(13.0)
    assert table.rows[0].summaries["solver.residual"].mean == pytest.approx(2e-3)


def test_metric_order_known_first_then_alphabetical(tmp_path: Path) -> None:
    table = collect(make_sweep(tmp_path))
    assert table.metrics == [
        "psnr", "ssim", "psnr_init", "ssim_init", "iters_mean",
        "solver.residual", "steps", "train_seconds",
    ]


def test_markdown_table(tmp_path: Path) -> None:
    table = collect(make_sweep(tmp_path), metrics=["psnr", "ssim"])
    md = table.to_markdown().splitlines()
    assert md[0] == "Common overrides: `debug=smoke`"
    assert md[2] == "| grad | n | failures | psnr | ssim |"
    assert md[3] == "|---|---:|---:|---:|---:|"
    # implicit: mean 28.4, std 0.2646 -> two significant digits of the std
    assert md[4] == "| implicit | 3 | 0 | 28.40 ± 0.26 | 0.810 ± 0.010 |"
    assert md[5] == "| jfb | 3 | 0 | 27.23 ± 0.21 | 0.810 ± 0.010 |"
    assert len(md) == 6


def test_failed_job_is_listed_not_fatal(tmp_path: Path) -> None:
    table = collect(make_sweep(tmp_path, fail_jfb_seed2=True), metrics=["psnr"])
    jfb = table.rows[1]
    assert (jfb.n, jfb.failures) == (2, 1)
    assert jfb.summaries["psnr"].mean == pytest.approx((27.0 + 27.4) / 2)
    assert [j.path for j in table.failed] == ["5"]
    md = table.to_markdown()
    assert "| jfb | 2 | 1 | 27.20 ± 0.28 |" in md
    assert "- `5` (failed): RuntimeError: boom" in md


def test_job_without_metrics_counts_as_failure(tmp_path: Path) -> None:
    write_job(tmp_path / "0", ["seed=0"], {"psnr": 30.0})
    write_job(tmp_path / "1", ["seed=1"], None)  # killed before writing metrics
    write_job(tmp_path / "2", ["seed=2"], None)
    (tmp_path / "2" / "metrics.json").write_text("{not json")
    write_job(tmp_path / "3", ["seed=3"], None, {"status": "stopped", "step": 40})  # preempted
    table = collect(tmp_path)
    assert table.group_keys == []
    (row,) = table.rows
    assert (row.n, row.failures) == (1, 3)
    assert row.summaries["psnr"] == Summary(mean=30.0, std=None, n=1)
    jobs = {j.path: j for j in table.failed}
    assert jobs["1"].status == "incomplete" and "no metrics.json (still running, or killed)" in jobs["1"].error
    assert jobs["2"].status == "failed" and "unreadable metrics.json" in jobs["2"].error
    assert jobs["3"].status == "incomplete" and "status 'stopped'" in jobs["3"].error


def test_single_seed_std_shown_as_dash_and_zero(tmp_path: Path) -> None:
    write_job(tmp_path / "0", ["trainer.lr=1e-3"], {"psnr": 30.0})
    write_job(tmp_path / "1", ["trainer.lr=1e-4"], {"psnr": 29.0})
    table = collect(tmp_path)
    md = table.to_markdown()
    assert "| 1e-4 | 1 | 0 | 29 ± – |" in md  # numeric order: 1e-4 before 1e-3
    assert md.index("1e-4") < md.index("1e-3")
    table.write_csv(tmp_path / "r.csv")
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["trainer.lr"] for r in rows] == ["1e-4", "1e-3"]
    assert rows[0]["psnr_mean"] == "29.0" and rows[0]["psnr_std"] == "0.0" and rows[0]["n"] == "1"


def test_natural_sort_of_jobs_and_values(tmp_path: Path) -> None:
    for i, width in enumerate([8, 16, 32, 64, 128, 2, 4, 256, 512, 1024, 3]):
        write_job(tmp_path / str(i), [f"model.width={width}"], {"psnr": float(width)})
    table = collect(tmp_path)
    assert [j.path for j in table.jobs] == [str(i) for i in range(11)]
    assert [int(r.values[0]) for r in table.rows] == [2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def test_group_by_config_key_and_override(tmp_path: Path) -> None:
    for i, (views, seed) in enumerate([(30, 0), (30, 1), (60, 0), (60, 1)]):
        cfg = {"seed": seed, "physics": {"views": views}}
        # the views differ only in the config (e.g. set by an experiment preset)
        write_job(tmp_path / str(i), [f"experiment=ct{views}", f"seed={seed}"], {"psnr": views + seed}, config=cfg)
    table = collect(tmp_path, group_by=["physics.views"])
    assert [r.values for r in table.rows] == [("30",), ("60",)]
    assert table.rows[1].summaries["psnr"].mean == pytest.approx(60.5)
    assert table.fixed == {}
    with pytest.raises(KeyError, match="physics.nope"):
        collect(tmp_path, group_by=["physics.nope"])


def test_nested_sweep_subdirs(tmp_path: Path) -> None:
    # hydra.sweep.subdir=${hydra.job.override_dirname} gives one level per job, possibly nested
    write_job(tmp_path / "grad=jfb" / "seed=0", ["grad=jfb", "seed=0"], {"psnr": 1.0})
    write_job(tmp_path / "grad=jfb" / "seed=1", ["grad=jfb", "seed=1"], {"psnr": 3.0})
    table = collect(tmp_path)
    assert [j.path for j in table.jobs] == ["grad=jfb/seed=0", "grad=jfb/seed=1"]
    assert table.fixed == {"grad": "jfb"}
    assert table.rows[0].summaries["psnr"].mean == 2.0


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="sweep directory not found"):
        collect(tmp_path / "missing")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no jobs found"):
        collect(tmp_path / "empty")
    write_job(tmp_path / "s" / "0", ["seed=0"], {"psnr": 1.0})
    with pytest.raises(KeyError, match=r"'lpips'.*available: \['psnr'\]"):
        collect(tmp_path / "s", metrics=["lpips"])


def test_parse_overrides() -> None:
    assert collect_mod.parse_overrides(["+debug=smoke", "++a.b=[1,2]", "~trainer.x", "k='a=b'"]) == {
        "debug": "smoke",
        "a.b": "[1,2]",
        "trainer.x": "~",
        "k": "'a=b'",
    }
    with pytest.raises(ValueError, match="'oops'"):
        collect_mod.parse_overrides(["oops"])


def test_format_summary() -> None:
    assert format_summary(Summary(28.3141, 0.1234, 3)) == "28.31 ± 0.12"
    assert format_summary(Summary(1234.5678, 31.0, 3)) == "1235 ± 31"
    assert format_summary(Summary(0.81234, 0.0042, 3)) == "0.8123 ± 0.0042"
    assert format_summary(Summary(5.0, 0.0, 2)) == "5 ± 0"
    assert format_summary(None) == "–"


def test_main_writes_three_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep(tmp_path / "sweep", fail_jfb_seed2=True)
    assert main([str(sweep), "--metrics", "psnr,ssim", "--out", str(tmp_path / "out" / "tab")]) == 0
    out = capsys.readouterr().out
    assert "| implicit | 3 | 0 | 28.40 ± 0.26 | 0.810 ± 0.010 |" in out
    assert (tmp_path / "out" / "tab.md").read_text() == out
    rows = list(csv.DictReader(open(tmp_path / "out" / "tab.csv")))
    assert [r["grad"] for r in rows] == ["implicit", "jfb"]
    assert float(rows[0]["psnr_mean"]) == pytest.approx(28.4)
    assert float(rows[0]["psnr_std"]) == pytest.approx(statistics.stdev([28.1, 28.5, 28.6]))
    assert rows[1]["failures"] == "1"
    jobs = list(csv.DictReader(open(tmp_path / "out" / "tab_jobs.csv")))
    assert len(jobs) == 6
    assert jobs[5]["status"] == "failed" and jobs[5]["error"] == "RuntimeError: boom" and jobs[5]["psnr"] == ""
    assert jobs[0]["seed"] == "0" and jobs[0]["debug"] == "smoke" and float(jobs[0]["psnr"]) == 28.1
    # default prefix: DIR/results
    assert main([str(sweep), "--quiet"]) == 0
    assert (sweep / "results.csv").is_file() and (sweep / "results_jobs.csv").is_file()


def test_main_reports_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("eqdeq collect: error: sweep directory not found") and "Traceback" not in err
    write_job(tmp_path / "s" / "0", ["seed=0"], {"psnr": 1.0})
    assert main([str(tmp_path / "s"), "--metrics", "lpips"]) == 1
    assert "metric(s) ['lpips'] not found" in capsys.readouterr().err


def test_non_finite_metric_gives_nan_mean_not_a_crash(tmp_path: Path) -> None:
    write_job(tmp_path / "0", ["seed=0"], {"psnr": 30.0, "rate": float("nan")})
    write_job(tmp_path / "1", ["seed=1"], {"psnr": 32.0, "rate": 0.5})
    (row,) = collect(tmp_path).rows
    assert row.summaries["psnr"].mean == 31.0
    assert math.isnan(row.summaries["rate"].mean) and row.summaries["rate"].std is None


def test_boolean_overrides_in_any_case_are_one_value(tmp_path: Path) -> None:
    write_job(tmp_path / "0", ["grad=jfb", "trainer.progress=False", "seed=0"], {"psnr": 30.0})
    write_job(tmp_path / "1", ["grad=jfb", "trainer.progress=false", "seed=1"], {"psnr": 32.0})
    (row,) = collect(tmp_path).rows
    assert row.n == 2 and row.summaries["psnr"].mean == 31.0


def test_markdown_leaves_out_bookkeeping_columns(tmp_path: Path) -> None:
    """One column named n (the job count); step counters and the sample count are not results."""
    for seed in (0, 1):
        write_job(tmp_path / str(seed), [f"seed={seed}"],
                  {"psnr": 30.0 + seed, "n": 8.0, "step": 2, "steps": 2, "nonfinite": 0.0,
                   "best_val": {"value": 29.0, "step": 2}})
    table = collect(tmp_path)
    header = table.to_markdown().splitlines()[2 if table.fixed else 0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["n", "failures", "psnr", "best_val.value"]
    assert {"n", "step", "steps", "nonfinite", "best_val.step"} <= set(table.metrics)  # still in the CSV


def test_time_capped_jobs_are_counted_and_listed(tmp_path: Path) -> None:
    note = "stopped at the time cap (trainer.max_minutes=8) at step 78 of 400"
    write_job(tmp_path / "0", ["grad=implicit"], {"psnr": 30.0, "steps": 400})
    write_job(tmp_path / "1", ["grad=jfb"], {"psnr": 25.0, "steps": 78, "time_cap": note})
    table = collect(tmp_path)
    assert [(r.values, r.time_capped) for r in table.rows] == [(("implicit",), 0), (("jfb",), 1)]
    md = table.to_markdown().splitlines()
    assert md[0] == "| grad | n | failures | time_capped | psnr |"
    assert md[-3:] == ["Stopped at the time cap, metrics of fewer steps (1):", "", f"- `1`: {note}"]
    table.write_jobs_csv(tmp_path / "jobs.csv")
    rows = list(csv.DictReader(open(tmp_path / "jobs.csv")))
    assert [r["time_cap"] for r in rows] == ["", note]
    table.write_csv(tmp_path / "groups.csv")
    assert [r["time_capped"] for r in csv.DictReader(open(tmp_path / "groups.csv"))] == ["0", "1"]
    assert "time_capped" not in collect(make_sweep(tmp_path / "plain")).to_markdown()


def _ct_config(**changes: object) -> dict:
    """A composed CT config as a job of the current version writes it; ``changes`` maps a dotted
    key to a new value (``None`` removes the key, as in a config from before the key existed)."""
    cfg = {"seed": 0, "task": "train",
           "physics": {"_target_": "eqdeq_cli.physics.CTRadon", "n_views": 25},
           "map": {"_target_": "eqdeq_cli.deq.maps.ProxGradMap", "anchor": 0.0, "preconditioner": "auto"},
           "grad": {"mode": "implicit", "sample_cache": 0},
           "trainer": {"max_steps": 150, "device": "auto", "progress": True}}
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return cfg


def test_jobs_with_equal_overrides_but_other_settings_get_their_own_rows(tmp_path: Path) -> None:
    # seed 0 from before map.preconditioner existed (no preconditioning), seeds 1 and 2 from now
    # (auto: ramp on CT), all three with the same command line
    write_job(tmp_path / "0", ["seed=0"], {"psnr": 36.0}, config=_ct_config(**{"map.preconditioner": None}))
    write_job(tmp_path / "1", ["seed=1"], {"psnr": 39.0}, config=_ct_config(seed=1))
    write_job(tmp_path / "2", ["seed=2"], {"psnr": 39.2}, config=_ct_config(seed=2, **{"map.preconditioner": "ramp"}))
    table = collect(tmp_path, metrics=["psnr"])
    assert table.group_keys == table.config_keys == ["map.preconditioner"]
    assert [(r.values, r.n) for r in table.rows] == [(("none",), 1), (("ramp",), 2)]
    assert table.rows[1].summaries["psnr"].mean == pytest.approx(39.1)
    md = table.to_markdown()
    assert "| map.preconditioner | n | failures | psnr |" in md
    assert ("Rows are also split by config keys that differ between jobs with the same overrides (a default "
            "changed between the runs, or a config file was edited): `map.preconditioner`.") in md


def test_added_keys_and_run_only_keys_do_not_split_rows(tmp_path: Path) -> None:
    # an older job without grad.sample_cache (= 0, as now), jobs run on another device, without a
    # progress bar: one experiment, one row
    write_job(tmp_path / "0", ["seed=0"], {"psnr": 30.0}, config=_ct_config(**{"grad.sample_cache": None}))
    write_job(tmp_path / "1", ["seed=1"], {"psnr": 31.0},
              config=_ct_config(seed=1, **{"trainer.device": "cuda", "trainer.progress": False}))
    table = collect(tmp_path, metrics=["psnr"])
    assert table.group_keys == [] and table.config_keys == []
    assert [r.n for r in table.rows] == [2]
    # a longer run is another experiment
    write_job(tmp_path / "2", ["seed=2"], {"psnr": 33.0}, config=_ct_config(seed=2, **{"trainer.max_steps": 400}))
    table = collect(tmp_path, metrics=["psnr"])
    assert table.group_keys == ["trainer.max_steps"]
    assert [(r.values, r.n) for r in table.rows] == [(("150",), 2), (("400",), 1)]


def test_explicit_group_by_lists_mixed_settings(tmp_path: Path) -> None:
    write_job(tmp_path / "0", ["seed=0"], {"psnr": 36.0}, config=_ct_config(**{"map.preconditioner": "none"}))
    write_job(tmp_path / "1", ["seed=1"], {"psnr": 39.0}, config=_ct_config(seed=1))
    table = collect(tmp_path, metrics=["psnr"], group_by=["physics.n_views"])
    assert table.group_keys == ["physics.n_views"] and table.mixed_keys == ["map.preconditioner"]
    assert [(r.values, r.n) for r in table.rows] == [(("25",), 2)]
    assert ("Jobs in one row differ in config keys not grouped by: `map.preconditioner` (add them to "
            "--group-by to split the rows).") in table.to_markdown()


def test_job_claimed_again_with_an_earlier_metrics_json_is_incomplete(tmp_path: Path) -> None:
    # a completed run trained further (or rerun with a longer max_steps): the runner rewrites
    # .hydra/overrides.yaml and status.json ("running", then "stopped" on a stop request), while
    # the metrics.json of the 2-step model stays until the new run ends
    earlier = {"psnr": 21.5, "step": 2, "steps": 2}
    write_job(tmp_path / "0", ["seed=0", "trainer.max_steps=300"], earlier,
              {"status": "stopped", "task": "train", "signal": "SIGTERM", "elapsed_s": 8.0})
    write_job(tmp_path / "1", ["seed=1", "trainer.max_steps=300"], earlier,
              {"status": "running", "task": "train"})
    write_job(tmp_path / "2", ["seed=2", "trainer.max_steps=300"], {"psnr": 30.0, "step": 300},
              {"status": "completed", "task": "train", "elapsed_s": 80.0})
    write_job(tmp_path / "3", ["seed=3", "trainer.max_steps=300"], {"psnr": 31.0, "step": 300})  # no status.json
    write_job(tmp_path / "4", ["seed=4", "trainer.max_steps=300"], earlier,
              {"status": "failed", "error": "RuntimeError: boom"})
    table = collect(tmp_path, metrics=["psnr"])
    (row,) = table.rows
    assert (row.n, row.failures) == (2, 3)
    assert row.summaries["psnr"] == Summary(mean=30.5, std=statistics.stdev([30.0, 31.0]), n=2)
    jobs = {j.path: j for j in table.jobs}
    assert [jobs[p].status for p in "01234"] == ["incomplete", "incomplete", "ok", "ok", "failed"]
    assert jobs["0"].error == "incomplete: status 'stopped' (metrics.json is from an earlier completion at step 2)"
    assert jobs["1"].error == "incomplete: status 'running' (metrics.json is from an earlier completion at step 2)"
    assert jobs["0"].metrics == {} and jobs["4"].error == "RuntimeError: boom"
    md = table.to_markdown()
    assert "- `0` (incomplete): status 'stopped' (metrics.json is from an earlier completion " \
           "at step 2)" in md
    # only the stopped job: its old metrics are not offered either
    with pytest.raises(KeyError) as info:
        collect(tmp_path / "0", metrics=["psnr"])
    assert info.value.args[0] == ("metric(s) ['psnr'] not found in any metrics.json; available: [] "
                                  "(1 of 1 jobs failed or incomplete: their metrics are not read)")


def _sweep_with_reconstructions(root: Path) -> None:
    """`seed=0,1` run with trainer.grad_clip 1.0, then `seed=2` after the default became 0.5:
    the same overrides, rows split by a config key; every job saved its reconstructions."""
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for seed, clip in ((0, 1.0), (1, 1.0), (2, 0.5)):
        cfg = {"seed": seed, "data": {"img_size": 8}, "trainer": {"grad_clip": clip},
               "evaluation": {"data_range": 1.0}}
        write_job(root / str(seed), [f"seed={seed}"], {"psnr": 30.0 + seed}, {"status": "completed"}, config=cfg)
        save_reconstructions_h5(root / str(seed) / "reconstructions" / "test.h5",
                                x=x, y=torch.zeros(3, 1, 4, 4), x_init=0.9 * x, x_hat=x + 0.01 * seed)


def test_rows_hold_their_jobs_and_the_figure_picks_from_them(tmp_path: Path) -> None:
    _sweep_with_reconstructions(tmp_path)
    table = collect(tmp_path, metrics=["psnr"])
    assert table.config_keys == ["trainer.grad_clip"]
    assert [(r.values, [j.path for j in r.jobs]) for r in table.rows] == [(("0.5",), ["2"]), (("1.0",), ["0", "1"])]
    assert [compare._representative(table, r).path for r in table.rows] == ["2", "0"]
    compare.comparison_figure(table, tmp_path / "f.png", n_images=2)
    # 2 rows of 1.6-inch cells (+ title strip), ground truth, A†y and the 2 rows' reconstructions, at 100 dpi
    assert matplotlib.image.imread(tmp_path / "f.png").shape[:2] == (2 * 160 + 30, 4 * 160)


def test_figure_with_rows_grouped_by_a_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _sweep_with_reconstructions(tmp_path)
    assert main([str(tmp_path), "--figure", "--quiet", "--group-by", "data.img_size", "--n-images", "3"]) == 0
    assert "error" not in capsys.readouterr().err
    (row,) = collect(tmp_path, group_by=["data.img_size"]).rows
    assert row.values == ("8",) and [j.path for j in row.jobs] == ["0", "1", "2"]
    assert matplotlib.image.imread(tmp_path / "results_figure.png").shape[:2] == (3 * 160 + 30, 3 * 160)


def _write_choices(job_dir: Path, **choices: str | None) -> None:
    """``.hydra/hydra.yaml`` as Hydra writes it, reduced to the config group options it records."""
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), job_dir / ".hydra" / "hydra.yaml")


def test_a_config_group_named_or_left_at_its_default_shares_a_row(tmp_path: Path) -> None:
    # a baseline sweep left grad at its default (implicit), a comparison sweep named it: one experiment
    implicit = {"seed": 0, "grad": {"mode": "implicit", "unroll_steps": 3}}
    jfb = {"seed": 0, "grad": {"mode": "jfb", "unroll_steps": 3}}
    write_job(tmp_path / "0", ["seed=0"], {"psnr": 30.0}, config=implicit)
    write_job(tmp_path / "1", ["grad=implicit", "seed=1"], {"psnr": 31.0}, config=implicit)
    write_job(tmp_path / "2", ["grad=jfb", "seed=0"], {"psnr": 28.0}, config=jfb)
    for num, grad in enumerate(("implicit", "implicit", "jfb")):
        _write_choices(tmp_path / str(num), grad=grad, debug=None, **{"trainer/optimizer": "adam"})
    table = collect(tmp_path, metrics=["psnr"])
    assert table.group_keys == ["grad"] and table.config_keys == []
    assert [(r.values, r.n, [j.path for j in r.jobs]) for r in table.rows] == [
        (("implicit",), 2, ["0", "1"]), (("jfb",), 1, ["2"])]
    assert table.rows[0].summaries["psnr"].mean == 30.5
    assert [r.values for r in collect(tmp_path, group_by=["grad"]).rows] == [("implicit",), ("jfb",)]
    # a group path that is no config key
    (row,) = collect(tmp_path, group_by=["trainer/optimizer"]).rows
    assert row.values == ("adam",) and row.n == 3
    # a job from before hydra.yaml was kept: its config node, as before
    write_job(tmp_path / "3", ["seed=2"], {"psnr": 29.0}, config=implicit)
    table = collect(tmp_path, metrics=["psnr"])
    assert [r.values for r in table.rows] == [("implicit",), ("jfb",), ('{"mode": "implicit", "unroll_steps": 3}',)]


def test_a_recorded_choice_that_does_not_describe_the_node_is_not_used(tmp_path: Path) -> None:
    implicit = {"seed": 0, "grad": {"mode": "implicit"}}
    jfb = {"seed": 0, "grad": {"mode": "jfb"}}
    # a sweep over a key inside the group: Hydra records grad: implicit for both
    write_job(tmp_path / "sw" / "0", ["grad.mode=implicit"], {"psnr": 30.0}, config=implicit)
    write_job(tmp_path / "sw" / "1", ["grad.mode=jfb"], {"psnr": 28.0}, config=jfb)
    # evaluations: hydra.yaml holds the eval command's defaults, config.yaml the evaluated model's
    write_job(tmp_path / "ev" / "0", ["ckpt=a"], {"psnr": 30.0}, config={**implicit, "task": "eval"})
    write_job(tmp_path / "ev" / "1", ["ckpt=b"], {"psnr": 28.0}, config={**jfb, "task": "eval"})
    for job in ("sw/0", "sw/1", "ev/0", "ev/1"):
        _write_choices(tmp_path / job, grad="implicit")
    for sweep in ("sw", "ev"):
        rows = collect(tmp_path / sweep, metrics=["psnr"], group_by=["grad"]).rows
        assert [(r.values, r.n) for r in rows] == [(('{"mode": "implicit"}',), 1), (('{"mode": "jfb"}',), 1)]
    # a nested group, by its path or its dotted key, with an override inside it
    adam = {"seed": 0, "trainer": {"optimizer": {"_target_": "torch.optim.Adam", "lr": 0.002}}}
    write_job(tmp_path / "nest" / "0", ["seed=0"], {"psnr": 30.0}, config=adam)
    write_job(tmp_path / "nest" / "1", ["trainer.optimizer.lr=0.1"], {"psnr": 20.0},
              config={"seed": 0, "trainer": {"optimizer": {"_target_": "torch.optim.Adam", "lr": 0.1}}})
    for job in ("nest/0", "nest/1"):
        _write_choices(tmp_path / job, **{"trainer/optimizer": "adam"})
    for key in ("trainer/optimizer", "trainer.optimizer"):
        rows = collect(tmp_path / "nest", metrics=["psnr"], group_by=[key]).rows
        assert [r.values for r in rows] == [("adam",), ('{"_target_": "torch.optim.Adam", "lr": 0.1}',)]


def test_a_running_job_that_no_process_holds_is_reported_as_killed(tmp_path: Path) -> None:
    from eqdeq_cli.runs.directory import hold_run_dir

    for name in ("alive", "killed", "old"):
        write_job(tmp_path / name, [f"+tag={name}"], None, {"status": "running", "task": "train"})
    (tmp_path / "killed" / ".lock").write_text("4242\n")  # its process died: nobody holds the lock
    lock = hold_run_dir(tmp_path / "alive")  # a live run (here, this process) holds it
    try:
        jobs = {j.path: j for j in collect(tmp_path).jobs}
    finally:
        lock.close()
    assert jobs["killed"].error == ("incomplete: no metrics.json (status 'running'; no process holds its lock: "
                                    "killed, or running on a machine that does not share file locks; the same "
                                    "command resumes it)")
    assert jobs["alive"].error == jobs["old"].error == "incomplete: no metrics.json (status 'running')"


def test_an_analysis_of_another_step_is_left_out(tmp_path: Path, caplog) -> None:
    summary = {"summary": {"lipschitz": 0.9}}
    for name, analysed in (("same", 400), ("older", 150)):
        write_job(tmp_path / name, [f"+tag={name}"], {"psnr": 30.0, "step": 400})
        (tmp_path / name / "analysis.json").write_text(json.dumps({**summary, "step": analysed}))
    jobs = {j.path: j for j in collect(tmp_path).jobs}
    assert jobs["same"].metrics["an_lipschitz"] == 0.9
    assert "an_lipschitz" not in jobs["older"].metrics and jobs["older"].metrics["psnr"] == 30.0
    assert "analysis.json is of step 150, the job's metrics.json of step 400: its columns are left out" in caplog.text


def test_the_comparison_lists_failed_jobs_as_the_table_does(tmp_path: Path) -> None:
    from eqdeq_cli.sweeps.compare import comparison_markdown

    table = collect(make_sweep(tmp_path, fail_jfb_seed2=True))
    assert "Failed or incomplete jobs (1):\n\n- `5` (failed): RuntimeError: boom" in comparison_markdown(table)
