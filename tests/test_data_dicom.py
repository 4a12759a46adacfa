"""scripts/dicom_to_hdf5.py on small synthetic DICOM series, read back with HDF5Data."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eqdeq_cli.data import HDF5Data

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "dicom_to_hdf5.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("dicom_to_hdf5", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_slice(path: Path, pixels: np.ndarray, *, z: float | None, instance: int, series: str,
                 slope: float = 1.0, intercept: float = -1024.0) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = "CT", series, instance
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if z is not None:
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.set_pixel_data(pixels.astype(np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=16)
    ds.save_as(path, enforce_file_format=True)


def _series(folder: Path, n: int, shape=(10, 12), series: str = "1.2.3", seed: int = 0, use_position=True):
    """n slices whose stored values are known; files named in an order unrelated to position."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    hu = []
    for k in range(n):
        pixels = rng.integers(0, 2048, size=shape)
        hu.append(pixels * 1.0 - 1024.0)
        z = 5.0 * k - 40.0 if use_position else None
        _write_slice(folder / f"{series}_{(7 * k) % n:03d}_{k}.dcm", pixels, z=z, instance=k + 1, series=series)
    (folder / "README.txt").write_text("not a DICOM file")
    return np.stack(hu)


def test_convert_window_sort_crop_and_split(script, tmp_path):
    hu = _series(tmp_path / "in", n=10, shape=(10, 12))
    out = tmp_path / "out.h5"
    assert script.main([str(tmp_path / "in"), str(out), "--window", "0", "1000", "--val-fraction", "0.2",
                        "--test-fraction", "0.1"]) == 0
    expected = np.clip((hu - (-500.0)) / 1000.0, 0, 1)[:, :, 1:11]  # window [-500, 500], centre crop 10x12 -> 10x10
    with h5py.File(out) as f:
        assert sorted(f) == ["test", "train", "val"]
        assert f.attrs["low"] == -500.0 and f.attrs["high"] == 500.0
        got = np.concatenate([f[s]["x"][...] for s in ("train", "val", "test")])
        assert [len(f[s]["x"]) for s in ("train", "val", "test")] == [7, 2, 1]
    assert got.shape == (10, 1, 10, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-6)  # slices in position order
    data = HDF5Data(path=out, img_size=10)
    assert len(data.split("val")) == 2 and data.split("train")[0]["x"].shape == (1, 10, 10)


def test_instance_number_order_range_and_resize(script, tmp_path):
    hu = _series(tmp_path / "in", n=4, shape=(8, 8), use_position=False)
    out = tmp_path / "out.h5"
    script.main([str(tmp_path / "in"), str(out), "--range", "-1024", "1024", "--size", "4",
                 "--val-fraction", "0", "--test-fraction", "0"])
    unit = np.clip((hu + 1024.0) / 2048.0, 0, 1)
    expected = F.avg_pool2d(torch.from_numpy(unit)[:, None].float(), 2).numpy()
    with h5py.File(out) as f:
        assert sorted(f) == ["train"]  # empty splits are omitted
        np.testing.assert_allclose(f["train/x"][...], expected, atol=1e-6)


def test_several_series_are_split_whole(script, tmp_path):
    for i in range(5):
        _series(tmp_path / "in" / f"s{i}", n=3, series=f"1.2.{i}", seed=i)
    out = tmp_path / "out.h5"
    script.main([str(tmp_path / "in"), str(out), "--recursive", "--val-fraction", "0.2", "--test-fraction", "0.2"])
    with h5py.File(out) as f:
        assert [len(f[s]["x"]) for s in ("train", "val", "test")] == [9, 3, 3]
        assert f.attrs["n_series"] == 5


def test_errors(script, tmp_path):
    pytest.importorskip("pydicom")
    with pytest.raises(SystemExit, match=r"DICOM folder '.*absent' does not exist"):
        script.main([str(tmp_path / "absent"), str(tmp_path / "o.h5")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no DICOM image slices found .*use --recursive"):
        script.main([str(tmp_path / "empty"), str(tmp_path / "o.h5")])
    _series(tmp_path / "in", n=2)
    with pytest.raises(SystemExit, match="2 slices leave no training data"):
        script.main([str(tmp_path / "in"), str(tmp_path / "o.h5"), "--val-fraction", "0.5", "--test-fraction", "0.5"])
    with pytest.raises(SystemExit, match="empty intensity range"):
        script.main([str(tmp_path / "in"), str(tmp_path / "o.h5"), "--range", "5", "5"])
    assert not (tmp_path / "o.h5").exists()


def test_help_and_missing_pydicom_message(script, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0 and "--window CENTER WIDTH" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
    with pytest.raises(ImportError, match=r"pip install eqdeq\[dicom\]"):
        script.import_pydicom()
