"""Data layer: in-memory uint8 datasets, sources, seeded sampling and on-device augmentation."""

from tl_jax.data.types import ArrayDataset, DataSplits
from tl_jax.data.sources import SOURCES, load_dataset, load_npz
from tl_jax.data import augment, preprocess, sampling

__all__ = ["ArrayDataset", "DataSplits", "SOURCES", "load_dataset", "load_npz", "augment",
           "preprocess", "sampling"]
