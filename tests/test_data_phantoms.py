"""Phantom generation: determinism, disjoint splits, value range, and the HDF5 cache."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from eqdeq_cli.data import PhantomData, default_cache_dir

SMALL = dict(img_size=24, n_train=6, n_val=3, n_test=3)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "data"


def _all(data: PhantomData, split: str) -> torch.Tensor:
    ds = data.split(split)
    return torch.stack([ds[i]["x"] for i in range(len(ds))])


def test_shapes_dtype_and_range(tmp_path):
    data = PhantomData(**SMALL, channels=2, cache_dir=tmp_path)
    assert (data.img_size, data.channels, data.has_images, data.has_measurements) == (24, 2, True, False)
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        x = _all(data, split)
        assert x.shape == (n, 2, 24, 24) and x.dtype == torch.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        # every phantom has a body: a sizeable non-zero region, and background at the corners
        assert ((x > 0).float().mean(dim=(1, 2, 3)) > 0.2).all()
        assert (x[:, :, 0, 0] == 0).all()
    item = data.split("train")[0]
    assert set(item) == {"x"}


def test_same_seed_identical_across_constructions(tmp_path):
    a = PhantomData(**SMALL, seed=3, cache_dir=tmp_path / "a")
    b = PhantomData(**SMALL, seed=3, cache_dir=tmp_path / "b")  # separate caches: generated twice
    for split in ("train", "val", "test"):
        assert torch.equal(_all(a, split), _all(b, split))


def test_splits_and_seeds_differ(tmp_path):
    data = PhantomData(**SMALL, seed=0, cache_dir=tmp_path)
    other = PhantomData(**SMALL, seed=1, cache_dir=tmp_path)
    flat = {s: _all(data, s).flatten(1) for s in ("train", "val", "test")}
    for s1, s2 in (("train", "val"), ("train", "test"), ("val", "test")):
        # no image of one split appears in another
        dist = torch.cdist(flat[s1].double(), flat[s2].double())
        assert dist.min() > 0, (s1, s2)
    assert not torch.equal(_all(data, "train"), _all(other, "train"))
    # images inside a split differ from each other as well
    d = torch.cdist(flat["train"].double(), flat["train"].double())
    assert (d + torch.eye(len(d), dtype=d.dtype) * 1e9).min() > 0


def test_cache_reused_then_invalidated(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="eqdeq_cli.data.phantoms")
    first = PhantomData(**SMALL, cache_dir=tmp_path)
    path = first.cache_path
    assert path.is_file() and path.parent == tmp_path
    mtime = path.stat().st_mtime_ns
    assert "Generating" in caplog.text
    caplog.clear()

    second = PhantomData(**SMALL, cache_dir=tmp_path)
    assert second.cache_path == path and path.stat().st_mtime_ns == mtime
    assert "Reusing" in caplog.text and "Generating" not in caplog.text
    assert torch.equal(_all(first, "val"), _all(second, "val"))
    caplog.clear()

    changed = PhantomData(**{**SMALL, "n_val": 4}, cache_dir=tmp_path)
    assert changed.cache_path != path and changed.cache_path.is_file()
    assert "Generating" in caplog.text
    assert len(list(tmp_path.glob("*.h5"))) == 2
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind


def test_corrupt_cache_file_is_regenerated(tmp_path, caplog):
    first = PhantomData(**SMALL, cache_dir=tmp_path)
    reference = _all(first, "train")
    first.cache_path.write_bytes(b"not an hdf5 file")
    caplog.set_level(logging.INFO, logger="eqdeq_cli.data.phantoms")
    again = PhantomData(**SMALL, cache_dir=tmp_path)
    assert "unreadable" in caplog.text and "Generating" in caplog.text
    assert torch.equal(_all(again, "train"), reference)


def test_default_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EQDEQ_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    data = PhantomData(**SMALL)
    assert data.cache_path.parent == tmp_path / "env"
    monkeypatch.delenv("EQDEQ_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "eqdeq"


def test_bad_arguments_and_split_names(tmp_path):
    data = PhantomData(**{**SMALL, "n_test": 0}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown split 'validation'.*'train', 'val', 'test'"):
        data.split("validation")
    with pytest.raises(ValueError, match=r"split 'test' is empty \(n_test=0\)"):
        data.split("test")
    with pytest.raises(ValueError, match="img_size must be an integer >= 8, got 4"):
        PhantomData(img_size=4, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="n_val must be a non-negative integer, got -1"):
        PhantomData(**{**SMALL, "n_val": -1}, cache_dir=tmp_path)
    with pytest.raises(TypeError):
        PhantomData(img_sise=32, cache_dir=tmp_path)  # misspelt option fails loudly


@pytest.mark.parametrize("name", ["phantoms", "tiny"])
def test_configs_instantiate(name, tmp_path):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    assert {"_target_", "img_size", "channels"} <= set(cfg)
    if name == "phantoms":  # keep the default test fast: same config, fewer images
        cfg.n_train, cfg.n_val, cfg.n_test = 2, 1, 1
    data = instantiate(cfg, cache_dir=str(tmp_path))
    assert isinstance(data, PhantomData)
    assert data.split("train")[0]["x"].shape == (cfg.channels, cfg.img_size, cfg.img_size)
