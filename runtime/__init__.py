"""edge-asr's runtime as a library: the names below are its public API, imported on first use (so that
`import edge_asr.runtime.cli` stays light).

    from edge_asr.runtime import Transcriber, TranscribeOptions
    transcriber = Transcriber("path/to/bundle", threads=2)
    print(transcriber.transcribe("clip.wav", TranscribeOptions(beam_size=5)).text)
"""
from __future__ import annotations

import importlib

_PUBLIC = {
    "Transcriber": "transcriber",
    "TranscribeOptions": "decoding.options",
    "Transcript": "transcript",
    "Segment": "transcript",
    "Word": "transcript",
    "OFFLINE_VAD": "speech_windows",
    "load_bundle": "bundle",
    "Bundle": "bundle",
    "StreamRecognizer": "streaming.recognizer",
    "StreamOptions": "streaming.recognizer",
    "StreamEvent": "streaming.events",
    "VadOptions": "streaming.segmenter",
    "SileroVad": "streaming.vad",
    "Threads": "threads",
    "EdgeAsrError": "errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'edge_asr.runtime' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"edge_asr.runtime.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
