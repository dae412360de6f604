"""Each load-test stream's words when it is the only stream: the reference that "words under load" is judged against.

The load test's WER mixes two things: the streams play the clips in different orders (stream i starts at clip i),
so each is prompted by other previous finals, and they share a loaded server. Only the second is load. So each
stream's own audio, as its client sends it (16-bit PCM), goes once more through `edge-asr stream --input` with the
server's model options: the same recognizer, Silero VAD, partials and decoding a server gives a lone stream, with
no other stream beside it. The words a stream got under load are then compared with its own words alone.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE
from edge_asr.runtime.errors import EdgeAsrError


def as_sent(audio: np.ndarray) -> np.ndarray:
    """float32 samples as the load test's client sends them: 16-bit little-endian PCM."""
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")


def alone_texts(streams: list[np.ndarray], model_options: list[str], say=None) -> list[str]:
    """Each stream's finals, joined by spaces as the load test joins them, from `edge-asr stream --input` over its
    audio alone, with ``model_options`` (the server's: --model/--bundle, --threads, --partial-interval ...).
    ``say(i, n)`` is told before each stream."""
    import soundfile

    texts = []
    with tempfile.TemporaryDirectory(prefix="edge-asr-alone-") as folder:
        for index, audio in enumerate(streams):
            if say is not None:
                say(index, len(streams))
            path = Path(folder) / f"stream-{index + 1}.wav"
            soundfile.write(path, as_sent(audio), SAMPLE_RATE, subtype="PCM_16")
            done = subprocess.run([sys.executable, "-m", "edge_asr.runtime.cli", "stream", "--input", str(path),
                                   "--format", "jsonl", *model_options],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode != 0:
                lines = [line for line in done.stderr.splitlines() if line.strip()] or ["it printed nothing"]
                raise EdgeAsrError(f"stream {index + 1} alone: edge-asr stream failed (exit status "
                                   f"{done.returncode}): {lines[-1].removeprefix('edge-asr: ')}")
            texts.append(finals_text(done.stdout))
    return texts


def finals_text(jsonl: str) -> str:
    """The finals of `edge-asr stream --format jsonl` output, joined by spaces (empty finals left out)."""
    events = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    return " ".join(e["text"] for e in events if e["type"] == "final" and e["text"])
