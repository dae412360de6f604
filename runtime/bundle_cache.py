"""Bundles compiled on first use: `edge-asr transcribe --model NAME` builds once into a per-user cache."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

from edge_asr.runtime.bundle import FORMAT_VERSION
from edge_asr.runtime.errors import EdgeAsrError, ModelSourceError

DEFAULT_MODEL = "tiny.en"  # live audio, serving, benchmarks: a stock stream's 15 s windows are no slower
# Files: the cached padding writes tiny.en's words in 0.54-0.59x the time (README, "Length-adaptive tiny.en").
FILE_MODEL = "tiny.en-adaptive"
DEFAULT_PRECISION = "int8"
COMPILE_MODULES = ("torch", "onnx")
# Part of a cached bundle's name: raised when compile writes bundles that run better (2: int8 graphs keep their
# tensors in weights files, 0.08 s off each load), so a model is compiled again once rather than kept as it was.
COMPILE_REVISION = 2


def cache_root() -> Path:
    if "EDGE_ASR_CACHE" in os.environ:
        return Path(os.environ["EDGE_ASR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-asr"


def _source_key(model: str) -> str:
    """Names a model's files by path, size and mtime: cheap, and changes when the weights do."""
    from edge_asr.models.zoo import locate_model

    digest = hashlib.sha256(f"{model}|format{FORMAT_VERSION}|compile{COMPILE_REVISION}".encode())
    for path in locate_model(model):
        stat = path.stat()
        digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def require_compile_tools(what: str) -> None:
    missing = [m for m in COMPILE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgeAsrError(
            f"{what} needs {', '.join(missing)}: pip install 'edge-asr[compile]', "
            "or pass --bundle DIR with a bundle compiled elsewhere."
        )


def cached_bundle(model: str, precision: str, log=lambda msg: print(msg, file=sys.stderr)) -> Path:
    """The cached bundle for a model, compiled now if it is not there yet (needs the compile extra)."""
    from edge_asr.models.zoo import KNOWN_MODELS

    try:
        key = _source_key(model)
    except ModelSourceError:
        if model in KNOWN_MODELS:  # its weight package is missing: the compile extra brings it too
            require_compile_tools(f"compiling {model}")
        raise
    safe_name = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(model).name)
    path = cache_root() / "bundles" / f"{safe_name}-{precision}-{key}"
    if (path / "manifest.json").is_file():
        return path
    require_compile_tools(f"compiling {model}")
    from edge_asr.compile.bundle_writer import compile_bundle

    log(f"edge-asr: compiling {model} ({precision}) into {path}; this happens once")
    return compile_bundle(model, precision, path, log=log)
