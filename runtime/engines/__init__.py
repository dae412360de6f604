"""Engines: one module per backend, all behind the interface in base.py."""
from __future__ import annotations

from edge_asr.runtime.bundle import Bundle
from edge_asr.runtime.engines.base import Engine
from edge_asr.runtime.errors import BundleError
from edge_asr.runtime.threads import Threads


def load_engine(bundle: Bundle, threads: int | Threads) -> Engine:
    """The engine for a bundle's backend; load_bundle has already checked the backend is here. ``threads``: the
    entry point's Threads (runtime/threads.py), or a number of threads.

    Each backend's module is imported only when a bundle needs it, so a device carries only its own.
    """
    threads = Threads.of(threads)
    threads.hold_blas()  # numpy's BLAS threads would spin on the engine's cores
    backend = bundle.target.backend
    if backend == "onnxruntime":
        from edge_asr.runtime.engines.ort import OrtEngine

        alignment = (lambda: bundle.checked_file("alignment")) if "alignment" in bundle.manifest["files"] else None
        return OrtEngine(bundle.file("encoder"), bundle.file("decoder"), bundle.dims, threads, alignment)
    if backend == "tvm":
        from edge_asr.runtime.engines.tvm import TvmEngine

        return TvmEngine(bundle, threads.engine)
    if backend == "tensorrt":
        from edge_asr.runtime.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(bundle, threads.engine)
    if backend == "torch":
        from edge_asr.runtime.engines.torch_engine import load_torch_engine

        return load_torch_engine(bundle, threads.engine)
    raise BundleError(f"bundle {bundle.path} needs the {backend} engine, which this edge-asr does not have.")
