"""Atomic writes: the file appears whole or not at all, and with the user's umask."""
from __future__ import annotations

import json
import os
import stat

import pytest

from eqdeq_cli.utils.files import atomic_write, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_respect_the_umask(tmp_path, umask_022):
    path = write_json(tmp_path / "metrics.json", {"psnr": 30.0})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0o600
    os.umask(0o077)
    with atomic_write(tmp_path / "private.bin", "wb") as fh:
        fh.write(b"x")
    assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_json(tmp_path / "status.json", {"status": "running"})
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write("{half")
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_checkpoints_status_and_images_respect_the_umask(tmp_path, umask_022):
    import torch

    from eqdeq_cli.engine.checkpoint import save_checkpoint
    from eqdeq_cli.engine.images import save_image_grid, save_reconstructions_h5
    from eqdeq_cli.runs.status import write_status

    paths = [save_checkpoint(tmp_path / "last.pt", {"model": {}, "step": 0, "config": {}}),
             write_status(tmp_path, "completed"),
             save_image_grid(tmp_path / "grid.png", {"x": torch.zeros(1, 1, 4, 4)}),
             save_reconstructions_h5(tmp_path / "r.h5", x=torch.zeros(1, 1, 4, 4))]
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in paths} == {p.name: 0o644 for p in paths}
