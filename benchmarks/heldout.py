"""The held-out judge of a student: bundles (or PyTorch checkpoints) transcribe sets of clips that no recipe
choice was ever made on, through the runtime's own decoding, in one run.

    python3 -m edge_asr.benchmarks.heldout --bundle tiny=DIR --bundle student=DIR [--model NAME=CKPT]
                                           [--heldout-corpus DIR] [--vad] [--threads 2] [--json FILE]

With --vad every model is judged twice: on whole clips, and on their speech alone as `transcribe --vad` cuts it.

The sets (each left out, and said so, when its package is missing):
- developer: JFK and the LibriVox clips of pocketsphinx-testdata; cards: its five card-game commands;
- alsa: the eight channel names of alsa-utils' speaker test ("Front left"...), real two-word commands;
- long-form: the developer clips joined by 1.5 s pauses into one 45 s recording, and the card clips
  joined likewise (timestamps and seeking);
- sounds: alsa's noise burst, the freedesktop sound theme's interface sounds (not its spoken channel
  names) and the first 30 s of Asterisk's music on hold: no words should be written on any of them;
- from a corpus built with `edge-asr corpus --split heldout`: its synthetic speech (sentences and voices
  never trained on), its Asterisk prompts (sentences never trained on, a speaker that was) and its
  non-speech.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_asr.models.clips import CARDS, Clip, developer_clips, sphinx_clips
from edge_asr.models.set_eval import ClipSets, SetResult, as_dict, results_table
from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.errors import EdgeAsrError

ALSA = Path("/usr/share/sounds/alsa")
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
MUSIC_ON_HOLD = Path("/usr/share/asterisk/moh")
JOIN_GAP_S = 1.5
SOUND_SECONDS = 30.0


def alsa_clips() -> list[Clip]:
    """alsa-utils' spoken channel names, with their names as references, and its noise burst (no words)."""
    clips = [Clip(p.stem, p, "" if p.stem == "Noise" else p.stem.replace("_", " ") + ".")
             for p in sorted(ALSA.glob("*.wav"))]
    return [c for c in clips if c.reference]


def sound_clips(work: Path) -> list[Clip]:
    """Non-speech recordings: alsa's noise, freedesktop's interface sounds, music on hold cut to 30 s."""
    clips = [Clip("alsa-noise", ALSA / "Noise.wav", "")] if (ALSA / "Noise.wav").is_file() else []
    clips += [Clip(p.stem, p, "") for p in sorted(FREEDESKTOP.glob("*.oga")) if not p.stem.startswith("audio-channel")]
    for path in sorted(MUSIC_ON_HOLD.glob("*.wav")):
        cut = work / f"moh-{path.stem}.wav"
        sf.write(cut, load_audio(path)[: int(SOUND_SECONDS * SAMPLE_RATE)], SAMPLE_RATE)
        clips.append(Clip(cut.stem, cut, ""))
    return clips


def joined_clip(name: str, clips: list[Clip], work: Path) -> Clip:
    """One recording of the clips read one after another with JOIN_GAP_S of silence between them."""
    gap = np.zeros(int(JOIN_GAP_S * SAMPLE_RATE), np.float32)
    audio = np.concatenate([part for clip in clips for part in (load_audio(clip.path), gap)])
    path = work / f"{name}.wav"
    sf.write(path, audio, SAMPLE_RATE)
    return Clip(name, path, " ".join(clip.reference for clip in clips))


def heldout_sets(work: Path, corpus: Path | None, log=print) -> dict[str, list[Clip]]:
    developer, cards = developer_clips(), sphinx_clips(CARDS) if CARDS.is_dir() else []
    if len(developer) == 1:
        log("heldout: only JFK of the developer clips (apt-get install pocketsphinx-testdata)")
    sets = {"developer": developer, "cards": cards, "alsa": alsa_clips(),
            "long-form": [joined_clip("developer-joined", developer, work)]
            + ([joined_clip("cards-joined", cards, work)] if cards else []),
            "sounds": sound_clips(work)}
    if corpus is not None:
        from edge_asr.models.corpus import read_manifest

        for entry in read_manifest(corpus):
            kind = "heldout-nonspeech" if not entry.text else (
                "heldout-asterisk" if entry.source == "asterisk" else "heldout-synthetic")
            sets.setdefault(kind, []).append(Clip(entry.id, corpus / entry.audio, entry.text))
    for name in [name for name, clips in sets.items() if not clips]:
        log(f"heldout: no {name} clips here; that set is left out")
        del sets[name]
    return sets


def judge_bundle(path: Path, sets: ClipSets, threads: int) -> dict[str, SetResult]:
    from edge_asr.runtime.transcriber import Transcriber

    transcriber = Transcriber(path, threads=threads)
    return sets.evaluate(transcriber.engine, transcriber.tokenizer, transcriber.options())


def judge_checkpoint(path: str, sets: ClipSets, threads: int) -> dict[str, SetResult]:
    import torch

    from edge_asr.models.whisper_torch import from_checkpoint
    from edge_asr.models.zoo import resolve_model
    from edge_asr.runtime.decoding.options import TranscribeOptions
    from edge_asr.runtime.engines.torch_engine import TorchEngine
    from edge_asr.runtime.tokenizer import WhisperTokenizer

    torch.set_num_threads(threads)
    checkpoint = resolve_model(path)
    tokenizer = WhisperTokenizer.from_file(checkpoint.tokenizer_json, checkpoint.dims.n_vocab >= 51865)
    suppress = tuple(checkpoint.suppress_tokens) if checkpoint.suppress_tokens is not None else (-1,)
    options = TranscribeOptions(suppress_tokens=suppress, window_policy=checkpoint.window_policy)
    return sets.evaluate(TorchEngine(from_checkpoint(checkpoint)), tokenizer, options)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m edge_asr.benchmarks.heldout", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=DIR", help="a bundle to judge")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="a checkpoint to judge with the PyTorch engine (a zoo name, a student.pt)")
    parser.add_argument("--heldout-corpus", type=Path, metavar="DIR", help="a corpus built with --split heldout")
    parser.add_argument("--vad", action="store_true", help="judge each model on the speech the VAD finds as well")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every transcript and figure here")
    args = parser.parse_args(argv)
    judged = [(spec, "bundle") for spec in args.bundle] + [(spec, "model") for spec in args.model]
    if not judged:
        parser.error("give at least one --bundle or --model")
    try:
        with tempfile.TemporaryDirectory(prefix="edge-asr-heldout-") as work:
            clips = heldout_sets(Path(work), args.heldout_corpus, log=lambda line: print(line, file=sys.stderr))
            modes = {"": ClipSets(clips)}
            if args.vad:
                from edge_asr.runtime.speech_windows import OFFLINE_VAD

                modes[" --vad"] = ClipSets(clips, speech_only=OFFLINE_VAD)
            results = {}
            for spec, kind in judged:
                name, _, path = spec.partition("=")
                if not path:
                    parser.error(f"expected NAME=PATH, not {spec!r}")
                print(f"heldout: judging {name} ({path})", file=sys.stderr, flush=True)
                judge = judge_bundle if kind == "bundle" else judge_checkpoint
                for suffix, sets in modes.items():
                    results[name + suffix] = judge(Path(path) if kind == "bundle" else path, sets, args.threads)
    except EdgeAsrError as err:
        print(f"heldout: {err}", file=sys.stderr)
        return 1
    print("\n".join(results_table(results)))
    if args.json:
        args.json.write_text(json.dumps({name: as_dict(r) for name, r in results.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
