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


def _meta(sop_class, syntax):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = syntax
    return meta


def _enhanced_ct(path: Path, frames: np.ndarray, z: list[float], slope: float, intercept: float) -> None:
    """An Enhanced CT object: the modality transform only in the shared functional groups, positions per frame."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian

    ds = pydicom.Dataset()
    ds.file_meta = _meta(EnhancedCTImageStorage, ExplicitVRLittleEndian)
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "CT", "1.2.9"
    shared, transform, orient = Dataset(), Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
    orient.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared.PixelValueTransformationSequence = Sequence([transform])
    shared.PlaneOrientationSequence = Sequence([orient])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for zk in z:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, zk]
        item.PlanePositionSequence = Sequence([plane])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.set_pixel_data(frames.astype(np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=16)
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multi_frame_modality_transform_and_positions(script, tmp_path):
    stored = np.random.default_rng(3).integers(0, 2048, size=(3, 8, 8))
    stored[0, 0, 0] = 1024  # air: stored 1024 -> 0 HU with intercept -1024
    (tmp_path / "in").mkdir()
    _enhanced_ct(tmp_path / "in" / "enhanced.dcm", stored, z=[10.0, -10.0, 0.0], slope=1.0, intercept=-1024.0)
    out = tmp_path / "out.h5"
    assert script.main([str(tmp_path / "in"), str(out), "--range", "-1024", "1024", "--val-fraction", "0",
                        "--test-fraction", "0"]) == 0
    hu = stored - 1024.0
    expected = np.clip((hu + 1024.0) / 2048.0, 0, 1)[[1, 2, 0]]  # frames ordered by position: z = -10, 0, 10
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["train/x"][:, 0], expected, atol=1e-6)
        assert f["train/x"][2, 0, 0, 0] == pytest.approx(0.5)


def test_monochrome1_is_inverted_to_the_monochrome2_picture(script, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    hu = _series(tmp_path / "m2", n=3, shape=(8, 8))
    for path in sorted((tmp_path / "m2").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = (65535 - ds.pixel_array).astype(np.uint16).tobytes()  # the same picture, stored inverted
        (tmp_path / "m1").mkdir(exist_ok=True)
        ds.save_as(tmp_path / "m1" / path.name)
    args = ["--val-fraction", "0", "--test-fraction", "0"]
    script.main([str(tmp_path / "m2"), str(tmp_path / "m2.h5"), *args])
    script.main([str(tmp_path / "m1"), str(tmp_path / "m1.h5"), *args])
    with h5py.File(tmp_path / "m2.h5") as a, h5py.File(tmp_path / "m1.h5") as b:
        m2, m1 = a["train/x"][...], b["train/x"][...]
    np.testing.assert_allclose(m2[:, 0], (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    np.testing.assert_allclose(m1, m2, atol=1e-6)


def test_pixel_padding_sets_neither_range_nor_values(script, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    hu = _series(tmp_path / "in", n=2, shape=(8, 8))
    for path in sorted((tmp_path / "in").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[:, 0] = 60000  # outside the scanned circle
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        ds.add_new(0x00280120, "US", 60000)  # PixelPaddingValue
        ds.save_as(path)
    script.main([str(tmp_path / "in"), str(tmp_path / "o.h5"), "--val-fraction", "0", "--test-fraction", "0"])
    with h5py.File(tmp_path / "o.h5") as f:
        x = f["train/x"][:, 0]
    inner = hu[:, :, 1:]
    np.testing.assert_allclose(x[:, :, 1:], (inner - inner.min()) / (inner.max() - inner.min()), atol=1e-6)


def _jpeg_ls_file(path: Path) -> None:
    """A JPEG-LS file whose codestream no installed decoder reads."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, JPEGLSLossless

    ds = pydicom.Dataset()
    ds.file_meta = _meta(CTImageStorage, JPEGLSLossless)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "CT", "1.2.3"
    ds.Rows = ds.Columns = 10
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not a codestream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_undecodable_file_is_named_with_its_decoder_or_skipped_and_counted(script, tmp_path, caplog):
    _series(tmp_path / "in", n=10, shape=(10, 10))
    _jpeg_ls_file(tmp_path / "in" / "zz_compressed.dcm")
    with pytest.raises(SystemExit) as err:
        script.main([str(tmp_path / "in"), str(tmp_path / "o.h5")])
    message = str(err.value)
    assert "\n" not in message and "zz_compressed.dcm" in message
    assert "JPEG-LS Lossless" in message and "pylibjpeg-libjpeg" in message and "--skip-unreadable" in message
    assert script.main([str(tmp_path / "in"), str(tmp_path / "o.h5"), "--skip-unreadable"]) == 0
    with h5py.File(tmp_path / "o.h5") as f:
        assert f.attrs["n_skipped"] == 1 and sum(len(f[s]["x"]) for s in f) == 10
    assert "skipped 1 unreadable file(s)" in caplog.text
