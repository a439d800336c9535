"""Sparse weights at rest (lossless packings) and at run time (2:4 kernels)."""

from .linear import SparseLinear24, convertible_shapes, kernel_paths, sparsify
from .packing import is_24, pack_24, pack_bitmask, unpack_24, unpack_bitmask
from .paths import path_counts

__all__ = ["SparseLinear24", "convertible_shapes", "is_24", "kernel_paths", "pack_24", "pack_bitmask", "path_counts",
           "sparsify", "unpack_24", "unpack_bitmask"]
