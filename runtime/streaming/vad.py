"""Silero VAD on onnxruntime: the speech probability of each 32 ms window, without torch.

The model is the ONNX file shipped in the ``silero-vad`` package. That package requires torch, so
it is found without being imported; a device installs it with ``pip install --no-deps``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import ModelSourceError
from edge_asr.runtime.threads import Threads

if TYPE_CHECKING:  # onnxruntime loads with the first detector, not with this module (its constants are read by
    import onnxruntime as ort  # the segmenter, which `transcribe --help` builds its flags from)

WINDOW_SAMPLES = 512  # the 16 kHz model judges 32 ms at a time
CONTEXT_SAMPLES = 64  # and sees the last 64 samples of the window before (silero's OnnxWrapper)
STATE_SHAPE = (2, 1, 128)
INSTALL_HINT = "pip install --no-deps silero-vad==6.2.3"


def locate_vad_model(explicit: str | os.PathLike | None = None) -> Path:
    """The Silero ONNX file: ``explicit``, else $EDGE_ASR_VAD_MODEL, else the installed silero-vad."""
    given = explicit or os.environ.get("EDGE_ASR_VAD_MODEL")
    if given:
        path = Path(given)
        if not path.is_file():
            raise ModelSourceError(f"The VAD model '{path}' does not exist.")
        return path
    spec = importlib.util.find_spec("silero_vad")  # finds the package without running its torch imports
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "data" / "silero_vad.onnx"
            if path.is_file():
                return path
    raise ModelSourceError(f"Streaming needs the Silero VAD model: {INSTALL_HINT}, or give --vad-model FILE.")


class SileroVad:
    """One audio stream's voice activity detector; it keeps the model's recurrent state between calls.

    Make it with the entry point's Threads before the engine (runtime/threads.py): it then gets one thread of
    its own (4 % of one core on silence). A server's streams share one session (``for_streams``): a session
    costs 10 MB, a stream's state 1 KB.
    """

    def __init__(self, model: str | os.PathLike | None = None, session: ort.InferenceSession | None = None,
                 threads: Threads | None = None):
        self.session = session or _load(locate_vad_model(model), threads or Threads())
        self._input = np.zeros((1, CONTEXT_SAMPLES + WINDOW_SAMPLES), np.float32)
        self._sample_rate = np.array(SAMPLE_RATE, np.int64)
        self.reset()

    @classmethod
    def for_streams(cls, count: int, model: str | os.PathLike | None = None,
                    threads: Threads | None = None) -> list["SileroVad"]:
        """Detectors for ``count`` streams on one session (onnxruntime runs a session from many threads)."""
        first = cls(model, threads=threads)
        return [first] + [cls(session=first.session) for _ in range(count - 1)]

    def reset(self) -> None:
        """Forget the audio heard so far (a new stream)."""
        self._state = np.zeros(STATE_SHAPE, np.float32)
        self._input[:] = 0

    def __call__(self, window: np.ndarray) -> float:
        """Speech probability of the next ``WINDOW_SAMPLES`` samples of the stream."""
        if window.shape != (WINDOW_SAMPLES,):
            raise ValueError(f"the VAD takes windows of {WINDOW_SAMPLES} samples, not {window.shape}")
        self._input[0, :CONTEXT_SAMPLES] = self._input[0, -CONTEXT_SAMPLES:]
        self._input[0, CONTEXT_SAMPLES:] = window
        probability, self._state = self.session.run(
            None, {"input": self._input, "state": self._state, "sr": self._sample_rate}
        )
        return float(probability[0, 0])


def _load(path: Path, threads: Threads) -> ort.InferenceSession:
    import onnxruntime as ort

    options = threads.helper_options()
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for a file that is not a model
        if "alloc" in str(err).lower():  # std::bad_alloc, "Failed to allocate": the file may be fine
            raise ModelSourceError(f"Cannot load the VAD model '{path}': out of memory.") from err
        raise ModelSourceError(f"Cannot load the VAD model '{path}': it is not a valid ONNX file.") from err
