"""The PNG grid and the HDF5 writer produce readable files with the promised layout."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from eqdeq_cli.engine.images import save_image_grid, save_reconstructions_h5, to_display


def _batch(b: int, c: int = 1, n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, n, n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rows,cols", [(2, 4), (4, 2)])
def test_grid_png_has_one_row_per_sample_and_one_column_per_entry(tmp_path, rows, cols):
    x = _batch(rows)
    columns = {f"col{j}": x * (j + 1) / cols for j in range(cols - 1)}
    columns["|error|"] = (x - 0.5).abs()
    out = save_image_grid(tmp_path / "sub" / "grid.png", columns)
    img = imread(out)
    h, w = img.shape[:2]
    expected = (rows * 1.6 + 0.3) / (cols * 1.6)
    assert h / w == pytest.approx(expected, rel=0.05)
    assert img.std() > 0.05  # not blank
    assert not any(p.name.endswith(".tmp") for p in out.parent.iterdir())


def test_grid_shows_complex_magnitude_and_rgb(tmp_path):
    z = torch.zeros(1, 2, 4, 4)
    z[:, 0], z[:, 1] = 0.3, 0.4
    assert np.allclose(to_display(z), 0.5)
    assert to_display(_batch(2, 3)).shape == (2, 16, 16, 3)
    save_image_grid(tmp_path / "c.png", {"a": _batch(2, 2), "b": _batch(2, 2, seed=1)})
    save_image_grid(tmp_path / "rgb.png", {"a": _batch(1, 3)})
    assert imread(tmp_path / "c.png").shape[0] > 0 and imread(tmp_path / "rgb.png").shape[0] > 0


def test_grid_rejects_mismatched_columns(tmp_path):
    with pytest.raises(ValueError, match="same number of images"):
        save_image_grid(tmp_path / "g.png", {"a": _batch(2), "b": _batch(3)})
    with pytest.raises(ValueError, match="channels"):
        save_image_grid(tmp_path / "g.png", {"a": _batch(2, 4)})
    with pytest.raises(ValueError, match="error_columns"):
        save_image_grid(tmp_path / "g.png", {"a": _batch(2)}, error_columns=["nope"])
    assert not (tmp_path / "g.png").exists()


def test_h5_round_trip(tmp_path):
    x = _batch(3, 1, 8)
    xc = torch.randn(2, 5, dtype=torch.complex64)
    out = save_reconstructions_h5(tmp_path / "r.h5", x_hat=x.double(), y=xc, idx=np.arange(3))
    with h5py.File(out) as f:
        assert f["x_hat"].dtype == np.float32 and f["x_hat"].compression == "gzip"
        np.testing.assert_allclose(f["x_hat"][()], x.numpy(), rtol=1e-7)
        assert bool(f["y"].attrs["complex"]) and f["y"].shape == (2, 5, 2)
        np.testing.assert_allclose(f["y"][..., 0] + 1j * f["y"][..., 1], xc.numpy(), rtol=1e-6)
        np.testing.assert_array_equal(f["idx"][()], np.arange(3))
