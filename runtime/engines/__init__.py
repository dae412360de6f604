"""Engines: one module per backend, all behind the interface in base.py."""
from __future__ import annotations

from edge_asr.runtime.bundle import Bundle
from edge_asr.runtime.engines.base import Engine
from edge_asr.runtime.errors import BundleError


def load_engine(bundle: Bundle, threads: int) -> Engine:
    """The engine for a bundle's backend; load_bundle has already checked the backend is here.

    Each backend's module is imported only when a bundle needs it, so a device carries only its own.
    """
    backend = bundle.target.backend
    if backend == "onnxruntime":
        from edge_asr.runtime.engines.ort import OrtEngine

        alignment = (lambda: bundle.checked_file("alignment")) if "alignment" in bundle.manifest["files"] else None
        return OrtEngine(bundle.file("encoder"), bundle.file("decoder"), bundle.dims, threads, alignment)
    if backend == "tvm":
        from edge_asr.runtime.engines.tvm import TvmEngine

        return TvmEngine(bundle, threads)
    if backend == "tensorrt":
        from edge_asr.runtime.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(bundle, threads)
    if backend == "torch":
        from edge_asr.runtime.engines.torch_engine import load_torch_engine

        return load_torch_engine(bundle, threads)
    raise BundleError(f"bundle {bundle.path} needs the {backend} engine, which this edge-asr does not have.")
