"""Datasets, batch transforms and the resumable batch order."""
from .datasets import SOURCES, ArrayDataset, build_dataset, synthetic_arrays
from .loader import BatchStream, epoch_permutation, iterate_in_order
from .packed import full_images
from .transforms import BatchAugment, center_crop, random_resized_crop, to_float

__all__ = ["SOURCES", "ArrayDataset", "build_dataset", "synthetic_arrays", "BatchStream",
           "full_images", "epoch_permutation", "iterate_in_order", "BatchAugment", "center_crop",
           "random_resized_crop", "to_float"]
