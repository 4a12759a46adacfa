"""fastMRI reader on small volumes written in the official single-coil layout."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eqdeq_cli.data import FastMRIData, ifft2c

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "data" / "fastmri.yaml"
KH, KW, R = 24, 20, 16  # k-space size (official: 640 x 368) and target size (official: 320)


def _fft2c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _write_volume(path: Path, n_slices: int, seed: int) -> dict[str, np.ndarray]:
    """A volume in the official layout: complex images -> kspace, plus a magnitude target."""
    rng = np.random.default_rng(seed)
    image = (rng.random((n_slices, KH, KW)) * np.exp(1j * rng.uniform(-np.pi, np.pi, (n_slices, KH, KW))))
    kspace = _fft2c(image).astype(np.complex64)
    top, left = (KH - R) // 2, (KW - R) // 2
    esc = (rng.random((n_slices, R, R)) * (1 + seed)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("reconstruction_esc", data=esc)
        f.create_dataset("ismrmrd_header", data=np.bytes_(b"<ismrmrdHeader/>"))
        f.attrs.update({"max": float(esc.max()), "norm": float(np.linalg.norm(esc)), "acquisition": "CORPD_FBK",
                        "patient_id": f"p{seed}"})
    return {"image": image[:, top:top + R, left:left + R], "esc": esc}


@pytest.fixture()
def root(tmp_path):
    vols = {}
    for split, seeds in (("train", (0, 1)), ("val", (2,)), ("test", (3,))):
        (tmp_path / split).mkdir()
        for s in seeds:
            vols[(split, s)] = _write_volume(tmp_path / split / f"file{s:03d}.h5", n_slices=3 + s % 2, seed=s)
    return tmp_path, vols


def _stack(ds) -> torch.Tensor:
    return torch.stack([ds[i]["x"] for i in range(len(ds))])


def test_ifft2c_inverts_centred_fft():
    x = np.random.default_rng(0).standard_normal((2, 6, 5)) + 0j
    assert np.allclose(ifft2c(torch.from_numpy(_fft2c(x))).numpy(), x)


def test_reconstruction_target_round_trip(root):
    path, vols = root
    data = FastMRIData(root=path, img_size=R)
    assert (data.img_size, data.channels, data.has_images, data.has_measurements) == (R, 1, True, False)
    x = _stack(data.split("train"))
    expected = [vols[("train", s)]["esc"] / vols[("train", s)]["esc"].max() for s in (0, 1)]
    assert x.shape == (3 + 4, 1, R, R) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.from_numpy(np.concatenate(expected)))  # sorted volumes, per-volume max
    raw = FastMRIData(root=path, img_size=R, normalize="none", data_range=4.0)  # volume 2 is in [0, 3]
    assert torch.equal(_stack(raw.split("val"))[:, 0], torch.from_numpy(vols[("val", 2)]["esc"]))


def test_kspace_target_magnitude_and_complex(root):
    path, vols = root
    image = vols[("val", 2)]["image"]
    mag = FastMRIData(root=path, target="kspace", img_size=R, normalize="none")
    assert torch.allclose(_stack(mag.split("val"))[:, 0], torch.from_numpy(np.abs(image)).float(), atol=1e-5)
    cplx = FastMRIData(root=path, target="kspace", img_size=R, channels=2, normalize="max")
    x = _stack(cplx.split("val"))
    ref = image / np.abs(image).max()
    assert x.shape == (3, 2, R, R)
    assert torch.allclose(x[:, 0], torch.from_numpy(ref.real).float(), atol=1e-5)
    assert torch.allclose(x[:, 1], torch.from_numpy(ref.imag).float(), atol=1e-5)


def test_crop_resize_and_slice_selection(root):
    path, vols = root
    data = FastMRIData(root=path, img_size=R // 2, crop_size=R, normalize="none", center_slices=1, max_slices=2,
                       data_range=4.0)
    x = _stack(data.split("train"))
    # central slice of each of the two train volumes (3 and 4 slices -> index 1 and 1)
    esc = np.stack([vols[("train", 0)]["esc"][1], vols[("train", 1)]["esc"][1]])
    pooled = F.avg_pool2d(torch.from_numpy(esc)[:, None], 2)
    assert x.shape == (2, 1, R // 2, R // 2) and torch.allclose(x, pooled)
    smaller = FastMRIData(root=path, img_size=8, normalize="none", max_slices=1, data_range=4.0)
    assert torch.equal(_stack(smaller.split("test"))[0, 0], torch.from_numpy(vols[("test", 3)]["esc"][0, 4:12, 4:12]))


def test_single_file_split_and_absolute_paths(root):
    path, vols = root
    data = FastMRIData(train_path=path / "val" / "file002.h5", val_path=None, test_path=None, img_size=R)
    assert len(data.split("train")) == 3
    with pytest.raises(ValueError, match=r"split 'val' is disabled \(val_path is null\)"):
        data.split("val")


def test_bad_inputs_give_clear_errors(root, tmp_path):
    path, _ = root
    with pytest.raises(FileNotFoundError, match=r"fastMRI train data '.*nowhere' does not exist"):
        FastMRIData(root=path, train_path="nowhere", img_size=R).split("train")
    (path / "void").mkdir()
    with pytest.raises(ValueError, match=r"folder '.*void' holds no \.h5 volumes"):
        FastMRIData(root=path, val_path="void", img_size=R).split("val")
    with pytest.raises(ValueError, match="is relative but root is not set"):
        FastMRIData(img_size=R).split("train")
    with pytest.raises(ValueError, match=r"cannot centre-crop 32x32 from images of size 16x16"):
        FastMRIData(root=path, img_size=32).split("train")
    with pytest.raises(ValueError, match="unknown target='rss'; valid values are 'reconstruction_esc', 'kspace'"):
        FastMRIData(root=path, target="rss")
    with pytest.raises(ValueError, match="channels=2 is not available for target='reconstruction_esc'"):
        FastMRIData(root=path, channels=2)
    with pytest.raises(ValueError, match="crop_size=8 must be at least img_size=16"):
        FastMRIData(root=path, img_size=16, crop_size=8)
    with pytest.raises(ValueError, match="unknown split 'training'"):
        FastMRIData(root=path).split("training")
    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "a.h5", "w") as f:
        f.create_dataset("kspace", data=np.zeros((2, 8, 8), np.complex64))
    with pytest.raises(KeyError, match=r"has no dataset 'reconstruction_esc'; datasets present: \['kspace'\]"):
        FastMRIData(root=bad, train_path=".", img_size=8).split("train")
    with h5py.File(bad / "a.h5", "w") as f:
        f.create_dataset("kspace", data=np.zeros((8, 8), np.complex64))
    with pytest.raises(ValueError, match=r"'kspace' in .* has shape \(8, 8\); expected \(slices, H, W\)"):
        FastMRIData(root=bad, train_path=".", target="kspace", img_size=8).split("train")
    with h5py.File(bad / "a.h5", "w") as f:
        esc = np.ones((2, 8, 8), np.float32)
        esc[1, 2, 2] = np.nan
        f.create_dataset("reconstruction_esc", data=esc)
    with pytest.raises(ValueError, match="holds 1 non-finite values .* first in sample 1"):
        FastMRIData(root=bad, train_path=".", img_size=8).split("train")
    (bad / "a.h5").write_bytes(b"not a volume")
    with pytest.raises(ValueError) as info:
        FastMRIData(root=bad, train_path=".", img_size=8).split("train")
    assert str(info.value) == f"fastMRI volume '{bad / 'a.h5'}' is not an HDF5 file (no HDF5 signature)"


def test_config_instantiates(root):
    path, _ = root
    cfg = OmegaConf.load(CONFIG)
    assert {"_target_", "img_size", "channels"} <= set(cfg)
    cfg.root, cfg.img_size = str(path), R
    data = instantiate(cfg)
    assert isinstance(data, FastMRIData) and data.split("test")[0]["x"].shape == (1, R, R)


def _undersample(path: Path, **how) -> None:
    """Turn a fully sampled volume into a test-split style one, as the official test set stores them."""
    with h5py.File(path, "r+") as f:
        k = f["kspace"][...]
        if how.get("zero_columns"):
            keep = np.zeros(KW, dtype=bool)
            keep[::4] = True
            keep[KW // 2 - 2:KW // 2 + 2] = True      # the fully sampled centre
            k[..., ~keep] = 0
            del f["kspace"]
            f.create_dataset("kspace", data=k)
        if how.get("mask"):
            f.create_dataset("mask", data=np.ones(KW, dtype=bool))
        if how.get("attrs"):
            f.attrs.update({"acceleration": 4, "num_low_frequency": 4})


@pytest.mark.parametrize("how, evidence", [
    ({"zero_columns": True}, "9 of the 17 k-space columns of its sampled band are all zero"),
    ({"mask": True}, "it holds a 'mask' dataset"),
    ({"attrs": True}, "it has the attribute acceleration=4, num_low_frequency=4")])
def test_undersampled_volumes_are_refused_naming_the_file(tmp_path, how, evidence):
    path = tmp_path / "file_test.h5"
    _write_volume(path, n_slices=2, seed=0)
    _undersample(path, **how)
    for target in ("kspace", "reconstruction_esc") if not how.get("zero_columns") else ("kspace",):
        data = FastMRIData(root=tmp_path, train_path=path.name, target=target, img_size=R)
        with pytest.raises(ValueError, match=rf"volume '.*file_test\.h5' is already undersampled \({evidence}"):
            data.split("train")


def test_zero_padding_at_the_k_space_edges_is_not_undersampling(tmp_path):
    path = tmp_path / "padded.h5"
    _write_volume(path, n_slices=2, seed=0)
    with h5py.File(path, "r+") as f:
        k = f["kspace"][...]
        k[..., :3] = 0
        k[..., -3:] = 0
        del f["kspace"]
        f.create_dataset("kspace", data=k)
    x = FastMRIData(root=tmp_path, train_path=path.name, target="kspace", img_size=R).split("train").tensors["x"]
    assert x.shape == (2, 1, R, R)
