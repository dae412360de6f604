"""Bundles: a directory with manifest.json, the engine files and the tokenizer.

The manifest is the contract between compile/ (which writes it) and runtime/ (which refuses, in one
sentence, any bundle it cannot run: unknown format, other target, missing backend, bad hash). A file is hashed
again only when it has changed since it last matched (runtime/file_stamps.py).
"""
from __future__ import annotations

import importlib.util
import json
import platform
from dataclasses import dataclass
from pathlib import Path

from edge_asr.runtime import file_stamps
from edge_asr.runtime.dims import ModelDims
from edge_asr.runtime.errors import BundleError, EdgeAsrError
from edge_asr.runtime.windows import WindowPolicy

FORMAT = "edge-asr-bundle"
# 2: the decoder takes its caches one input per layer. Entries added later with a default that means what
# a bundle without them did (the model's window policy, TVM window buckets) need no new version.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ROLES = ("encoder", "decoder", "tokenizer")
# A PyTorch bundle holds one weights file that serves both roles of the graphs.
BACKEND_ROLES = {"torch": ("weights", "tokenizer")}
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Target:
    """Where a bundle runs: the backend that executes it and the machines it was built for."""

    name: str
    backend: str
    python_module: str  # the backend's package, without which no engine can run the bundle
    machines: tuple[str, ...] = ()

    def refusal(self) -> str | None:
        """Why this machine cannot run the target, or None when it can."""
        if self.machines and platform.machine() not in self.machines:
            return f"it was compiled for {self.name} ({'/'.join(self.machines)}), and this machine is {platform.machine()}"
        if importlib.util.find_spec(self.python_module) is None:
            return f"it needs the {self.backend} backend (Python package {self.python_module}), which is not installed"
        return None


TARGETS = {
    t.name: t
    for t in (
        Target("cpu", "onnxruntime", "onnxruntime"),
        Target("rpi4", "tvm", "tvm", ("aarch64", "arm64")),
        Target("tvm-x86", "tvm", "tvm", ("x86_64", "AMD64")),
        Target("jetson-orin", "tensorrt", "tensorrt", ("aarch64",)),
        Target("jetson-xavier", "tensorrt", "tensorrt", ("aarch64",)),
        Target("cuda", "torch", "torch"),  # any NVIDIA GPU with PyTorch: x86 servers, a Jetson with NVIDIA's wheel
    )
}

# Files only some runs read, hashed when first loaded (Bundle.checked_file) rather than at every start: the
# alignment graph of word timestamps is as large as the decoder.
LAZY_ROLES = ("alignment",)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    @property
    def dims(self) -> ModelDims:
        return ModelDims.from_dict(self.manifest["model"]["dims"])

    @property
    def target(self) -> Target:
        return TARGETS[self.manifest["target"]]

    @property
    def suppress_tokens(self) -> list[int] | None:
        return self.manifest["model"].get("suppress_tokens")

    @property
    def window_policy(self) -> WindowPolicy:
        """Whether the model needs 30 s windows; a manifest that does not say is stock Whisper's (it does)."""
        return WindowPolicy.from_dict(self.manifest["model"])

    def file(self, role: str) -> Path:
        return self.path / self.manifest["files"][role]["path"]

    def checked_file(self, role: str) -> Path:
        """A file load_bundle left unhashed (LAZY_ROLES), its sha256 checked now, when it is first needed."""
        path = self.file(role)
        if not file_stamps.matches(path, self.manifest["files"][role]["sha256"]):
            raise BundleError(f"bundle {self.path} is damaged: {path.name} does not match its sha256 in the manifest.")
        return path


def load_bundle(path: Path, verify: bool = True) -> Bundle:
    """Read and check a bundle; every refusal is one sentence that names the bundle."""
    path = Path(path)
    manifest = _read_manifest(path)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"bundle {path} has format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
            f"this edge-asr reads {FORMAT!r} version {FORMAT_VERSION}: recompile it with `edge-asr compile`."
        )
    problem = _manifest_problem(manifest)
    if problem:
        raise BundleError(f"bundle {path} has a broken {MANIFEST} ({problem}): recompile it with `edge-asr compile`.")
    target = TARGETS.get(manifest.get("target"))
    if target is None:
        raise BundleError(f"bundle {path} is for target {manifest.get('target')!r}, which this edge-asr does not know.")
    reason = target.refusal()
    if reason:
        raise BundleError(f"bundle {path} cannot run here: {reason}.")
    for role, entry in manifest["files"].items():
        file = path / entry["path"]
        if not file.is_file():
            raise BundleError(f"bundle {path} is incomplete: its {role} file {entry['path']} is missing.")
        if verify and role not in LAZY_ROLES and not file_stamps.matches(file, entry["sha256"]):
            raise BundleError(f"bundle {path} is damaged: {entry['path']} does not match its sha256 in the manifest.")
    return Bundle(path, manifest)


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise BundleError(f"bundle {path} does not exist (make one with `edge-asr compile`).")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} is not a bundle: it has no {MANIFEST}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"bundle {path} has a {MANIFEST} that is not valid JSON.") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {path} has a {MANIFEST} that is not a JSON object.")
    return manifest


def _manifest_problem(manifest: dict) -> str | None:
    """What is structurally wrong with a manifest, or None; checked before any file is opened."""
    try:
        ModelDims.from_dict(manifest["model"]["dims"])
    except (KeyError, TypeError, ValueError):
        return "no complete model dimensions"
    try:
        WindowPolicy.from_dict(manifest["model"])
    except EdgeAsrError as err:
        return f"its window policy is wrong: {str(err).rstrip('.')}"
    files = manifest.get("files")
    roles = BACKEND_ROLES.get(manifest.get("backend"), ROLES)
    if not isinstance(files, dict) or not all(role in files for role in roles):
        return f"its files table must name {', '.join(roles)}"
    for role, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            return f"no sha256 for {role}"
        relative = Path(str(entry.get("path", "")))
        if not relative.parts or relative.is_absolute() or ".." in relative.parts:
            return f"the {role} path must lie inside the bundle"
    return None
