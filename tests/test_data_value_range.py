"""Images on a scale other than [0, evaluation.data_range] are refused in one line; the noise
level follows the same range."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from eqdeq_cli.data import FastMRIData, HDF5Data
from eqdeq_cli.physics import GaussianNoise, PoissonGaussianNoise, PoissonNoise


def _write(path, x):
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x)
    return path


def _ramp(n: int = 10, size: int = 8) -> np.ndarray:
    """``n`` images, each a ramp from 0 to 1."""
    return np.tile(np.linspace(0.0, 1.0, size * size).reshape(1, size, size), (n, 1, 1))


@pytest.mark.parametrize("values, found", [((_ramp() * 4095).astype(np.uint16), r"\[0, 4095\]"),
                                           (_ramp() * 1000.0, r"\[0, 1000\]"),
                                           (_ramp() * 1e-4, r"\[0, 0\.0001\]"),
                                           (_ramp() * 2 - 1, r"\[-1, 1\]")])
def test_images_off_the_range_are_refused_in_one_line(tmp_path, values, found):
    path = _write(tmp_path / "d.h5", values)
    with pytest.raises(ValueError, match=found) as err:
        HDF5Data(path=path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "data.normalize: max" in message and "evaluation.data_range=1 " in message


def test_uint16_images_are_read_with_their_range_or_normalised(tmp_path):
    values = (_ramp() * 4095).astype(np.uint16)
    path = _write(tmp_path / "d.h5", values)
    x = HDF5Data(path=path, data_range=4095.0).split("train").tensors["x"]
    assert float(x.max()) == 4095.0
    assert float(HDF5Data(path=path, normalize="max").split("train").tensors["x"].amax()) == 1.0


def test_stored_measurements_offer_only_the_data_range(tmp_path):
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.create_dataset("x", data=_ramp() * 1000.0)
        f.create_dataset("y", data=np.zeros((10, 4)))
    with pytest.raises(ValueError, match="rescale the images when writing the file, or set evaluation.data_range"):
        HDF5Data(path=tmp_path / "m.h5")


def test_complex_images_may_have_signed_parts(tmp_path):
    z = _ramp().astype(np.complex64) * np.exp(2.3j)  # magnitudes in [0, 1], parts signed
    x = HDF5Data(path=_write(tmp_path / "c.h5", z), channels=2).split("train").tensors["x"]
    assert float(x.amin()) < -0.5


def test_fastmri_volume_without_normalisation_is_refused_naming_the_file(tmp_path):
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("reconstruction_esc", data=(_ramp(3, 16) * 3e-4).astype(np.float32))
    data = FastMRIData(root=tmp_path, train_path="v.h5", img_size=16, normalize="none")
    with pytest.raises(ValueError, match=r"fastMRI volume '.*v\.h5' holds values in \[0, 0\.0003\]"):
        data.split("train")
    assert float(FastMRIData(root=tmp_path, train_path="v.h5", img_size=16).split("train").tensors["x"].max()) == 1


@pytest.mark.parametrize("model", [GaussianNoise, PoissonNoise, PoissonGaussianNoise])
def test_noise_level_scales_with_the_data_range(model):
    """Images R times larger give measurements R times larger with the same relative noise."""
    z = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    unit, wide = model(data_range=1.0), model(data_range=4095.0)
    assert wide.risk_parameters() == pytest.approx(tuple(4095.0 * v for v in unit.risk_parameters()))
    small = unit(z, torch.Generator().manual_seed(1)) - z
    big = wide(4095.0 * z, torch.Generator().manual_seed(1)) - 4095.0 * z
    assert torch.allclose(big / 4095.0, small, atol=1e-4)


def test_config_passes_the_evaluation_range_to_data_and_noise(compose_cfg, tmp_path):
    cfg = compose_cfg(["data=hdf5", f"data.path={tmp_path / 'd.h5'}", "data.img_size=8", "physics=mri",
                       "evaluation.data_range=4095"])
    assert cfg.data.data_range == 4095 and cfg.physics.noise.data_range == 4095
    assert compose_cfg(["physics=ct", "physics/noise=poisson_gaussian"]).physics.noise.data_range == 1.0
