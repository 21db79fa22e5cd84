"""Datasets, batch transforms and the resumable batch order."""
from .datasets import SOURCES, ArrayDataset, build_dataset, synthetic_arrays
from .loader import BatchStream, epoch_permutation, iterate_in_order
from .transforms import BatchAugment, random_resized_crop, to_float

__all__ = ["SOURCES", "ArrayDataset", "build_dataset", "synthetic_arrays", "BatchStream",
           "epoch_permutation", "iterate_in_order", "BatchAugment", "random_resized_crop", "to_float"]
