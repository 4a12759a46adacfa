"""Generic HDF5 reader: both layouts round-trip, and each bad input gets its message."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eqdeq_cli.data import HDF5Data

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "data" / "hdf5.yaml"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _write(path: Path, datasets: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as f:
        for name, arr in datasets.items():
            f.create_dataset(name, data=arr)
    return path


def _stack(ds, key: str) -> torch.Tensor:
    return torch.stack([ds[i][key] for i in range(len(ds))])


def test_grouped_file_round_trip(tmp_path):
    rng = _rng()
    arrays = {s: rng.random((n, 16, 16)).astype(np.float32) for s, n in (("train", 5), ("val", 2), ("test", 3))}
    path = _write(tmp_path / "d.h5", {f"{s}/x": a for s, a in arrays.items()})
    data = HDF5Data(path=path)
    assert (data.img_size, data.channels, data.has_images, data.has_measurements) == (16, 1, True, False)
    for s, a in arrays.items():
        ds = data.split(s)
        assert len(ds) == len(a) and set(ds[0]) == {"x"}
        x = _stack(ds, "x")
        assert x.dtype == torch.float32 and x.shape == (len(a), 1, 16, 16)
        assert torch.equal(x[:, 0], torch.from_numpy(a))


def test_flat_file_split_contiguously_by_fractions(tmp_path):
    a = _rng().random((20, 2, 8, 8))  # float64 on disk, read as float32
    path = _write(tmp_path / "flat.h5", {"img": a})
    data = HDF5Data(path=path, image_key="img", channels=2, img_size=8, val_fraction=0.25, test_fraction=0.1)
    sizes = {s: len(data.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 13, "val": 5, "test": 2}
    joined = torch.cat([_stack(data.split(s), "x") for s in ("train", "val", "test")])
    assert torch.equal(joined, torch.from_numpy(a).float())  # file order kept, nothing lost or repeated


def test_one_file_per_split_with_images_and_measurements(tmp_path):
    rng = _rng(1)
    files = {}
    for s, n in (("train", 4), ("val", 2)):
        files[s] = (rng.random((n, 1, 8, 8), dtype=np.float32), rng.standard_normal((n, 5, 12), dtype=np.float32))
        _write(tmp_path / f"{s}.h5", {"x": files[s][0], "y": files[s][1]})
    data = HDF5Data(train_path=tmp_path / "train.h5", val_path=tmp_path / "val.h5")
    assert data.has_images and data.has_measurements
    for s, (x, y) in files.items():
        ds = data.split(s)
        assert torch.equal(_stack(ds, "x"), torch.from_numpy(x))
        assert torch.equal(_stack(ds, "y"), torch.from_numpy(y))
    with pytest.raises(ValueError, match="no file given for split 'test'; set test_path"):
        data.split("test")


def test_measurement_only_file_with_complex_data(tmp_path):
    rng = _rng(2)
    y = {s: (rng.standard_normal((3, 8, 8)) + 1j * rng.standard_normal((3, 8, 8))).astype(np.complex64)
         for s in ("train", "val", "test")}
    path = _write(tmp_path / "y.h5", {f"{s}/y": v for s, v in y.items()})
    with pytest.raises(ValueError, match="img_size must be given for measurement-only data"):
        HDF5Data(path=path)
    data = HDF5Data(path=path, img_size=8)
    assert not data.has_images and data.has_measurements and data.img_size == 8
    item = data.split("val")[1]
    assert set(item) == {"y"} and item["y"].shape == (2, 8, 8)
    assert torch.equal(item["y"][0], torch.from_numpy(y["val"][1].real))
    assert torch.equal(item["y"][1], torch.from_numpy(y["val"][1].imag))


@pytest.mark.parametrize("mode", ["minmax", "max"])
def test_normalisation_per_image(tmp_path, mode):
    a = np.stack([np.linspace(2, 6, 64).reshape(8, 8), np.full((8, 8), 3.0), np.zeros((8, 8))]).astype(np.float32)
    data = HDF5Data(path=_write(tmp_path / "n.h5", {"x": a}), normalize=mode, val_fraction=0.0, test_fraction=0.0)
    x = _stack(data.split("train"), "x")[:, 0]
    if mode == "minmax":
        assert torch.allclose(x[0], (torch.from_numpy(a[0]) - 2) / 4)
        assert x[0].min() == 0 and x[0].max() == 1
        assert torch.equal(x[1], torch.zeros(8, 8))  # constant image -> 0, no division by zero
    else:
        assert torch.allclose(x[0], torch.from_numpy(a[0]) / 6)
        assert torch.equal(x[1], torch.ones(8, 8))
    assert torch.equal(x[2], torch.zeros(8, 8))


def test_bad_inputs_give_clear_errors(tmp_path):
    rng = _rng(3)
    good = rng.random((4, 8, 8)).astype(np.float32)
    with pytest.raises(FileNotFoundError, match=r"HDF5 data file '.*missing\.h5' does not exist"):
        HDF5Data(path=tmp_path / "missing.h5")
    p = _write(tmp_path / "keys.h5", {"images": good, "labels": np.arange(4)})
    with pytest.raises(KeyError, match=r"has no dataset 'x' or 'y'; datasets present: \['images', 'labels'\]"):
        HDF5Data(path=p)
    p = _write(tmp_path / "rank.h5", {"x": rng.random((2, 3, 4, 8, 8))})
    with pytest.raises(ValueError, match=r"dataset 'x' in .*rank\.h5 has shape \(2, 3, 4, 8, 8\) \(rank 5\); "
                                         r"images must be \(N, H, W\) or \(N, C, H, W\)"):
        HDF5Data(path=p)
    p = _write(tmp_path / "size.h5", {"x": good})
    with pytest.raises(ValueError, match=r"holds 8x8 images but img_size=16; set img_size: 8"):
        HDF5Data(path=p, img_size=16)
    p = _write(tmp_path / "rect.h5", {"x": rng.random((2, 8, 6))})
    with pytest.raises(ValueError, match=r"holds 8x6 images; only square images"):
        HDF5Data(path=p)
    p = _write(tmp_path / "last.h5", {"x": rng.random((2, 8, 8, 3))})
    with pytest.raises(ValueError) as info:
        HDF5Data(path=p, channels=3)
    assert str(info.value) == (f"dataset 'x' in {p} has shape (2, 8, 8, 3), which looks channels-last (N, H, W, C) "
                               "with 8x8 images of 3 channel(s); images must be channels-first (N, C, H, W): "
                               "write np.moveaxis(x, -1, 1) to the file")
    p = _write(tmp_path / "chan.h5", {"x": rng.random((2, 3, 8, 8))})
    with pytest.raises(ValueError, match=r"images with 3 channel\(s\) but channels=1; set channels: 3"):
        HDF5Data(path=p)
    p = _write(tmp_path / "empty.h5", {"train/x": good, "val/x": np.zeros((0, 8, 8)), "test/x": good})
    with pytest.raises(ValueError, match=r"dataset 'x' in .*empty\.h5:/val is empty \(shape \(0, 8, 8\)\)"):
        HDF5Data(path=p)
    nan = good.copy()
    nan[2, 3, 3] = np.nan
    nan[2, 1, 1] = np.inf
    p = _write(tmp_path / "nan.h5", {"x": nan})
    with pytest.raises(ValueError, match=r"nan\.h5 holds 2 non-finite values \(NaN or inf\), the first in sample 2"):
        HDF5Data(path=p)
    p = _write(tmp_path / "pair.h5", {"x": good, "y": np.zeros((3, 5))})
    with pytest.raises(ValueError, match="4 images but 3 measurements"):
        HDF5Data(path=p)
    with pytest.raises(ValueError, match="would rescale x but not y"):
        HDF5Data(path=_write(tmp_path / "xy.h5", {"x": good, "y": np.zeros((4, 5))}), normalize="max")
    with pytest.raises(ValueError, match=r"unknown normalize='unit'; valid values are 'none', 'minmax', 'max'"):
        HDF5Data(path=p, normalize="unit")
    few = _write(tmp_path / "few.h5", {"x": good})
    with pytest.raises(ValueError, match=r"split 'val' of .*few\.h5 is empty \(4 samples, val_fraction=0\.1\)"):
        HDF5Data(path=few).split("val")
    with pytest.raises(ValueError, match="4 samples leave no training data"):
        HDF5Data(path=few, val_fraction=0.5, test_fraction=0.4)
    grouped = _write(tmp_path / "g.h5", {"train/x": good, "test/x": good})
    with pytest.raises(ValueError, match=r"has no group 'val' \(groups present: \['train', 'test'\]\)"):
        HDF5Data(path=grouped).split("val")
    with pytest.raises(ValueError, match="already holds split groups"):
        HDF5Data(path=grouped, val_fraction=0.2)
    with pytest.raises(ValueError, match="not both"):
        HDF5Data(path=grouped, train_path=grouped)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        HDF5Data(path=grouped).split("dev")
    mixed = _write(tmp_path / "mixed.h5", {"train/x": good, "test/y": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="splits hold different datasets"):
        HDF5Data(path=mixed, img_size=8)


def test_files_that_are_not_readable_hdf5_are_named(tmp_path):
    npy = tmp_path / "images.npy"
    np.save(npy, np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ValueError) as info:
        HDF5Data(path=npy)
    assert str(info.value) == f"HDF5 data file '{npy}' is not an HDF5 file (no HDF5 signature)"
    empty = tmp_path / "val.h5"
    empty.touch()
    with pytest.raises(ValueError, match=r"HDF5 data file '.*val\.h5' is not an HDF5 file"):
        HDF5Data(train_path=_write(tmp_path / "train.h5", {"x": np.zeros((2, 8, 8))}), val_path=empty)
    whole = _write(tmp_path / "whole.h5", {"x": _rng().random((64, 32, 32))}).read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(whole[: len(whole) // 2])  # a copy that stopped half-way
    with pytest.raises(ValueError, match=r"HDF5 data file '.*cut\.h5' is a damaged HDF5 file \(.*truncated"):
        HDF5Data(path=cut)


def test_config_instantiates(tmp_path):
    path = _write(tmp_path / "c.h5", {f"{s}/x": np.ones((2, 1, 8, 8), np.float32) for s in ("train", "val", "test")})
    cfg = OmegaConf.load(CONFIG)
    assert {"_target_", "img_size", "channels"} <= set(cfg)
    cfg.path, cfg.img_size = str(path), 8
    data = instantiate(cfg)
    assert isinstance(data, HDF5Data) and data.split("test")[0]["x"].shape == (1, 8, 8)


def _train_on(path: Path, tmp_path: Path, capfd) -> tuple[int, list[str]]:
    """``eqdeq train`` on an HDF5 file (tiny budgets); returns the exit status and the stderr
    lines other than progress (INFO) lines."""
    from conftest import TINY
    from eqdeq_cli import cli

    overrides = [o for o in TINY if not o.startswith("data")]
    code = cli.main(["train", *overrides, "data=hdf5", f"data.path={path}", "data.img_size=8",
                     f"hydra.run.dir={tmp_path / 'run'}"])
    err = capfd.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.strip().splitlines() if "[INFO]" not in line]


@pytest.mark.parametrize("case", ["not_hdf5", "channels_last"])
def test_train_reports_a_bad_data_file_in_one_line(tmp_path, capfd, cache_dir, case):
    if case == "not_hdf5":
        path = tmp_path / "data.npy"
        np.save(path, np.zeros((8, 8, 8), np.float32))
        message = f"HDF5 data file '{path}' is not an HDF5 file (no HDF5 signature)"
    else:
        path = _write(tmp_path / "rgb.h5", {"x": _rng().random((8, 8, 8, 3)).astype(np.float32)})
        message = (f"dataset 'x' in {path} has shape (8, 8, 8, 3), which looks channels-last (N, H, W, C) with "
                   "8x8 images of 3 channel(s); images must be channels-first (N, C, H, W): "
                   "write np.moveaxis(x, -1, 1) to the file")
    code, lines = _train_on(path, tmp_path, capfd)
    assert code == 1 and len(lines) == 1 and lines[0].endswith(f"[ERROR] {message}"), lines
