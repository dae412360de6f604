"""Run a bundle where it is (natively, or under qemu in the arm64 root) and save what the tests compare.

    python3 arm64_probe.py BUNDLE AUDIO OUT.npz

Saves the first 30 s window's Mel input, the prompt's tokens, the encoder's cross-attention keys and the logits of a
two-token prompt (sot, no-timestamps), then transcribes AUDIO and prints {"text": ..., "tvm_libraries":
[the TVM libraries the engine loaded]} as JSON.
Imports only edge_asr.runtime: this is what a board runs.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from edge_asr.runtime.audio import load_audio
from edge_asr.runtime.decoding.transcribe import window_mel
from edge_asr.runtime.mel import HOP_LENGTH, N_SAMPLES
from edge_asr.runtime.transcriber import Transcriber


def main(bundle: str, audio: str, out: str) -> None:
    transcriber = Transcriber(bundle, threads=2)
    engine, tokenizer = transcriber.engine, transcriber.tokenizer
    samples = load_audio(audio)
    content = transcriber.frontend(samples, padding=N_SAMPLES)[:, : len(samples) // HOP_LENGTH]
    mel = window_mel(content[:, : 2 * engine.dims.n_audio_ctx], 2 * engine.dims.n_audio_ctx, None, 0.0)
    context = engine.encode(mel)
    tokens = np.array([[tokenizer.sot, tokenizer.no_timestamps]])
    logits = engine.decode(tokens, np.zeros(1, np.int64), engine.new_cache(1), context, np.array([[0, 1]]))
    np.savez(out, mel=mel, tokens=tokens, cross_k=np.asarray(context.cross_k), logits=logits)
    import tvm  # already imported by the engine, in the mode it chose

    print(json.dumps({"text": transcriber.transcribe(audio).text, "tvm_libraries": sorted(tvm.base._LOADED_LIBS)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
