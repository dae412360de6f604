"""Host buffers as numpy arrays, optionally page-locked so the GPU copies them by DMA.

A pageable buffer makes every host-to-device copy go through a staging buffer of the driver, which
also makes an "async" copy synchronous; a page-locked one does not. On Jetson, whose CPU and GPU
share memory, a mapped page-locked buffer is read by the GPU in place, with no copy at all.
"""
from __future__ import annotations

import ctypes
import weakref
from types import ModuleType

import numpy as np
from numpy.typing import DTypeLike

from edge_asr.runtime.errors import EdgeAsrError


def host_buffer(
    shape: int | tuple[int, ...], dtype: DTypeLike = np.float32, pinned: bool = False,
    mapped: bool = False,
) -> np.ndarray:
    """A zeroed array; page-locked (``cudaHostAlloc``) when ``pinned``, and mapped into the GPU's
    address space when ``mapped`` as well, which Jetson's shared memory reads without a copy.

    Page-locked memory goes back to CUDA (``cudaFreeHost``) once the array and all its views are
    collected: they keep the ctypes block that owns the pointer alive through ``.base``."""
    if not pinned:
        return np.zeros(shape, dtype)
    cudart = cuda_runtime()
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    nbytes = max(count * dtype.itemsize, 1)  # cudaHostAlloc of 0 bytes gives no pointer to wrap
    flags = cudart.cudaHostAllocMapped if mapped else cudart.cudaHostAllocDefault
    error, pointer = cudart.cudaHostAlloc(nbytes, flags)
    if error != cudart.cudaError_t.cudaSuccess:
        raise EdgeAsrError(
            f"Page-locked buffers need cuda-python and a CUDA device: cudaHostAlloc failed with "
            f"{error.name} ({cudart.cudaGetErrorString(error)[1].decode()}); else use pinned=False."
        )
    pointer = int(pointer)
    memory = (ctypes.c_byte * nbytes).from_address(pointer)
    release = weakref.finalize(memory, cudart.cudaFreeHost, pointer)
    release.atexit = False  # at exit the CUDA runtime may be gone already, and the OS frees it all
    array = np.frombuffer(memory, dtype, count).reshape(shape)
    array.fill(0)
    return array


def cuda_runtime() -> ModuleType:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as err:
            raise EdgeAsrError(
                "Page-locked buffers need cuda-python and a CUDA device: install cuda-python, "
                "or use pinned=False."
            ) from err
    return cudart

