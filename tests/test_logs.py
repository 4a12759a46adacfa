"""``metrics.csv``: one row per evaluation, and a header that grows with the metrics;
TensorBoard: a resumed run's curves do not repeat the steps a killed process logged."""
from __future__ import annotations

import csv

from conftest import TINY
from eqdeq_cli.engine.logs import MetricsCSV, TensorBoard
from eqdeq_cli.runs import train as run


def test_a_row_with_a_new_metric_widens_the_header_and_keeps_earlier_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    MetricsCSV(path).append(1, "val", 0.5, {"psnr": 20.0})
    log = MetricsCSV(path)  # a resumed run reads the header back
    log.append(2, "val", 1.25, {"psnr": 21.0, "lipschitz": 0.9})
    log.append(3, "test", 2.0, {"psnr": 22.0})
    assert path.read_text().splitlines() == [
        "step,split,time_s,lipschitz,psnr",
        "1,val,0.5,,20.0",
        "2,val,1.25,0.9,21.0",
        "3,test,2.0,,22.0",
    ]


def test_lipschitz_estimated_after_the_first_validation_reaches_the_test_row(compose_cfg, tmp_path):
    """Validation at step 1, first contraction estimate at step 2: the test row has it."""
    overrides = [*TINY, "trainer.max_steps=2", "trainer.eval_every=1", "trainer.contraction_every=2"]
    run.train(compose_cfg(overrides), run_dir=tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv", newline="")))
    assert [r["split"] for r in rows] == ["val", "val", "test"]
    assert rows[0]["lipschitz"] == "" and float(rows[-1]["lipschitz"]) > 0


def test_a_resumed_run_hides_the_steps_a_killed_process_logged_after_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    killed = TensorBoard(tmp_path)  # checkpoint at step 3, killed after logging step 6
    for step in range(1, 7):
        killed.scalars("train", {"loss": float(step)}, step)
    killed.writer.close()
    resumed = TensorBoard(tmp_path, purge_step=4)  # the trainer's purge step: checkpoint step + 1
    for step in range(4, 9):
        resumed.scalars("train", {"loss": 10.0 * step}, step)
    resumed.writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == \
        [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0), (7, 70.0), (8, 80.0)]


def test_a_row_of_the_same_step_and_split_replaces_the_earlier_one(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsCSV(path)
    log.append(2, "val", 1.0, {"psnr": 20.0})
    log.append(2, "test", 1.0, {"psnr": 21.0})
    MetricsCSV(path).append(2, "test", 1.5, {"psnr": 21.5})  # the finished run evaluated again
    assert path.read_text().splitlines() == ["step,split,time_s,psnr", "2,val,1.0,20.0", "2,test,1.5,21.5"]


def test_a_row_of_the_same_step_and_split_replaces_the_one_the_same_log_wrote(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsCSV(path)
    log.append(2, "test", 1.0, {"psnr": 21.0})
    log.append(2, "test", 1.5, {"psnr": 21.5})
    log.purge(3)
    log.append(3, "val", 2.0, {"psnr": 22.0})
    log.append(3, "val", 2.5, {"psnr": 22.5})
    assert path.read_text().splitlines() == ["step,split,time_s,psnr", "2,test,1.5,21.5", "3,val,2.5,22.5"]


def test_an_append_of_a_new_row_does_not_read_the_file_back(tmp_path, monkeypatch):
    """A long run appends one row per evaluation: the cost of a row does not grow with the file."""
    path = tmp_path / "metrics.csv"
    MetricsCSV(path).append(1, "val", 0.5, {"psnr": 20.0})
    log = MetricsCSV(path)

    def no_read(self):
        raise AssertionError("metrics.csv read back for an append")

    monkeypatch.setattr(MetricsCSV, "_rows", no_read)
    for step in range(2, 50):
        log.append(step, "val", float(step), {"psnr": 20.0 + step})
    assert len(path.read_text().splitlines()) == 50


def test_purge_drops_the_rows_a_run_writes_again(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsCSV(path)
    for step in (1, 2, 3):
        log.append(step, "val", float(step), {"psnr": 20.0 + step})
    MetricsCSV(path).purge(3)  # resumed from the checkpoint of step 2
    assert path.read_text().splitlines() == ["step,split,time_s,psnr", "1,val,1.0,21.0", "2,val,2.0,22.0"]
    MetricsCSV(path).purge(1)  # the same experiment trained again from the start
    assert path.read_text().splitlines() == ["step,split,time_s,psnr"]


def test_a_run_trained_again_after_its_checkpoints_were_removed_logs_each_row_once(cache_dir, tmp_path):
    import shutil

    from eqdeq_cli import cli

    command = ["train", *TINY, "trainer.max_steps=2", "trainer.eval_every=1", f"hydra.run.dir={tmp_path}"]
    assert cli.main(command) == 0
    first = (tmp_path / "metrics.csv").read_text().splitlines()
    shutil.rmtree(tmp_path / "checkpoints")
    assert cli.main(command) == 0  # the same experiment, trained again (with a warning)
    rows = [line.split(",")[:2] for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == [["1", "val"], ["2", "val"], ["2", "test"]]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == len(first)
