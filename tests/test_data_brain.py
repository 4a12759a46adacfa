"""The MNI152 brain-template slices: shapes, range, a split without leakage, determinism,
no network, every physics, and the one-line error when the extra is missing."""
from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from eqdeq_cli.data.brain import INSTALL_HINT, BrainTemplateData, block_split
from eqdeq_cli.errors import UserError, user_error_message


@pytest.fixture(scope="module")
def brain():
    pytest.importorskip("nilearn")
    return BrainTemplateData(img_size=32)


def test_block_split_of_a_known_sequence():
    """30 slices, blocks of 5: block 1 is test, block 4 val; 2 slices dropped on the train side
    of every boundary (the held-out blocks keep all theirs)."""
    parts = block_split(30, block_size=5, val_fraction=0.2, test_fraction=0.2, gap=2)
    assert parts["test"].tolist() == [5, 6, 7, 8, 9]
    assert parts["val"].tolist() == [20, 21, 22, 23, 24]
    assert parts["train"].tolist() == [0, 1, 2, 12, 13, 14, 15, 16, 17, 27, 28, 29]


@pytest.mark.parametrize("n, block, val, test, gap", [(125, 12, 0.1, 0.2, 3), (60, 4, 0.25, 0.25, 1),
                                                      (40, 7, 0.0, 0.3, 0), (200, 10, 0.15, 0.15, 5)])
def test_block_split_keeps_splits_apart_by_more_than_the_gap(n, block, val, test, gap):
    parts = block_split(n, block_size=block, val_fraction=val, test_fraction=test, gap=gap)
    for a in parts:
        for b in parts:
            if a < b and len(parts[a]) and len(parts[b]):
                assert np.abs(parts[a][:, None] - parts[b][None, :]).min() > gap
    assert len(parts["train"]) > 0 and (len(parts["val"]) > 0) == (val > 0) and len(parts["test"]) > 0
    everything = np.concatenate(list(parts.values()))
    assert len(np.unique(everything)) == len(everything)  # no slice in two splits


def test_block_split_refuses_holding_out_every_block():
    with pytest.raises(ValueError, match=r"too few to hold out 1 val and 2 test blocks .* lower data.block_size"):
        block_split(30, block_size=10, val_fraction=0.1, test_fraction=0.5, gap=1)


def test_default_slices_shapes_and_range(brain):
    sizes = {s: len(brain.split(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 71, "val": 12, "test": 24}  # the counts in configs/data/brain.yaml
    for split in sizes:
        x = brain.split(split).tensors["x"]
        assert x.shape == (sizes[split], 1, 32, 32) and x.dtype == torch.float32
        assert float(x.min()) == 0.0 and float(x.max()) <= 1.0
        # near-empty slices are left out: every image holds a sizeable brain
        assert ((x > 0.05).float().mean(dim=(1, 2, 3)) > 0.1).all()
    peak = max(float(brain.split(s).tensors["x"].max()) for s in sizes)
    assert peak > 0.8


def test_slices_of_different_splits_are_more_than_the_gap_apart(brain):
    idx = brain.slice_index
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert np.abs(idx[a][:, None] - idx[b][None, :]).min() > brain.gap
    # held-out slices come from both the lower and the upper half of the brain
    middle = (idx["train"].min() + idx["train"].max()) / 2
    assert idx["test"].min() < middle < idx["test"].max()


def test_brain_lies_inside_the_inscribed_disc(brain):
    """Rotations about the centre and CT views of every angle see the whole brain: pixels wholly
    outside the disc are 0, and the brain reaches the disc's edge (no resolution wasted)."""
    x = torch.cat([brain.split(s).tensors["x"] for s in ("train", "val", "test")])
    t = (torch.arange(32) + 0.5) / 16 - 1
    radius = (t[:, None] ** 2 + t[None, :] ** 2).sqrt()
    half_diagonal = 2 ** 0.5 / 32  # of one pixel, in the same units (the image spans [-1, 1])
    assert float(x[..., radius > 1 + half_diagonal].abs().max()) == 0.0
    assert float(x[..., radius > 0.85].amax()) > 0.2


def test_same_images_every_time_and_scaled_by_the_data_range(brain):
    again = BrainTemplateData(img_size=32, data_range=4.0)
    for split in ("train", "val", "test"):
        assert torch.equal(again.split(split).tensors["x"], 4.0 * brain.split(split).tensors["x"])
        assert np.array_equal(again.slice_index[split], brain.slice_index[split])


def test_reads_without_network(monkeypatch):
    """The template is inside nilearn's wheel: reading it opens no connection."""
    pytest.importorskip("nilearn")

    def refuse(*args, **kwargs):
        raise AssertionError("the brain data tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(BrainTemplateData(img_size=16, gap=1).split("test")) > 0


@pytest.mark.parametrize("key, value, message", [
    ("channels", 2, "data.channels must be 1 for the brain template (one T1 contrast), got 2"),
    ("img_size", 4, "data.img_size must be an integer >= 8, got 4"),
    ("gap", -1, "data.gap must be an integer >= 0, got -1"),
    ("test_fraction", 1.0, "data.test_fraction must be a real number in [0.0, 1.0), got 1.0"),
])
def test_bad_parameters_are_named(key, value, message):
    with pytest.raises(ValueError) as err:
        BrainTemplateData(**{key: value})
    assert str(err.value) == message


def test_missing_nilearn_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)  # makes `import nilearn...` raise ImportError
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)
    with pytest.raises(UserError) as err:
        BrainTemplateData(img_size=16)
    message = user_error_message(err.value)
    assert "\n" not in message and message.startswith("data=brain reads the MNI152 template shipped with nilearn")
    assert message.endswith(f"install it with: {INSTALL_HINT}") and INSTALL_HINT == "pip install 'eqdeq[brain]'"


@pytest.mark.parametrize("physics", ["ct", "mri", "inpainting"])
def test_config_builds_and_every_physics_measures_the_slices(compose_cfg, brain, physics):
    cfg = compose_cfg(["data=brain", "data.img_size=32", f"physics={physics}", "evaluation.data_range=1.0"])
    data = instantiate(cfg.data)
    assert isinstance(data, BrainTemplateData) and data.img_size == 32 and data.data_range == 1.0
    x = data.split("val").tensors["x"][:2]
    op = instantiate(cfg.physics)
    y = op.A(x)
    assert torch.isfinite(y).all() and float(y.abs().max()) > 0
    assert op.A_dagger(y).shape == x.shape
