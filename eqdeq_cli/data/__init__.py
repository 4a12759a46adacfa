"""Data sources: built-in phantoms, brain template slices, generic HDF5 files and fastMRI volumes.

Each source has ``.split(name)`` (``"train"``, ``"val"``, ``"test"``) returning a dataset
of dict items (``"x"``: images ``(C, H, W)``, ``"y"``: measurements) and attributes
``img_size``, ``channels``, ``has_images`` and ``has_measurements``.
"""
from .base import SPLITS, DataSource, TensorDictDataset, check_split_name, default_cache_dir
from .brain import BrainTemplateData
from .fastmri import FastMRIData, ifft2c
from .hdf5 import HDF5Data
from .phantoms import PhantomData, random_ellipse_phantoms
from .preprocess import area_resize, center_crop, normalize

__all__ = ["SPLITS", "DataSource", "TensorDictDataset", "check_split_name", "default_cache_dir",
           "PhantomData", "random_ellipse_phantoms", "BrainTemplateData", "HDF5Data", "FastMRIData", "ifft2c", "area_resize", "center_crop", "normalize"]
