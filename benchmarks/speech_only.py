"""Does `transcribe --vad` keep the words, and how much encoder work does it save? Each bundle transcribes the
same recordings whole and speech-only, in one run.

    python3 -m edge_asr.benchmarks.speech_only --bundle NAME=DIR [--bundle NAME=DIR ...] [--threads 2] [--json F]

Sets (each left out, and said so, when its package is missing):
- developer: JFK and the LibriVox clips, each on its own;
- paused: the developer clips, and the card clips, each set joined into one recording with pauses of 2-8 s of
  quiet room noise between the clips (seeded), plus JFK read once in the middle of 2 minutes of that noise;
- sounds: heldout.py's non-speech recordings (alsa's noise, interface sounds, music on hold): words written.

Per set and mode: WER (words written, for sounds), encoder window seconds per second of audio, and wall seconds.

`--sets tune` measures instead on what the VAD settings were chosen with, never the sets above: the Asterisk
prompts of the tune split (models/real_speech.py), each alone and joined with pauses into four recordings.
`--vad-variants` adds modes with other VAD settings and encoder contexts, e.g.
`min_silence_ms=2000,context=full`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_asr.models.clips import CARDS, JFK, REFERENCES_NAME, Clip, developer_clips, sphinx_clips
from edge_asr.benchmarks.heldout import sound_clips
from edge_asr.models.wer import corpus_wer, normalise
from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.errors import EdgeAsrError

NOISE_DBFS = -55.0  # the room between the clips: audible, far under speech
PAUSE_S = (2.0, 8.0)
LONG_SILENCE_S = 120.0


def room_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Pink noise (power falling as 1/f above 50 Hz) at NOISE_DBFS."""
    spectrum = np.fft.rfft(rng.standard_normal(int(seconds * SAMPLE_RATE)))
    frequencies = np.fft.rfftfreq(int(seconds * SAMPLE_RATE), 1 / SAMPLE_RATE)
    noise = np.fft.irfft(spectrum / np.sqrt(np.maximum(frequencies, 50.0)), int(seconds * SAMPLE_RATE))
    return (noise * (10 ** (NOISE_DBFS / 20) / (float(np.sqrt(np.mean(noise**2))) or 1.0))).astype(np.float32)


def paused_recording(name: str, clips: list[Clip], work: Path, rng: np.random.Generator) -> Clip:
    """The clips one after another with a pause of room noise before, between and after them."""
    parts = [room_noise(rng.uniform(*PAUSE_S), rng)]
    for clip in clips:
        parts += [load_audio(clip.path), room_noise(rng.uniform(*PAUSE_S), rng)]
    path = work / f"{name}.wav"
    sf.write(path, np.concatenate(parts), SAMPLE_RATE)
    return Clip(name, path, " ".join(clip.reference for clip in clips))


def speech_in_silence(work: Path, rng: np.random.Generator) -> Clip:
    noise = room_noise(LONG_SILENCE_S, rng)
    half = len(noise) // 2
    path = work / "jfk-in-silence.wav"
    sf.write(path, np.concatenate([noise[:half], load_audio(JFK), noise[half:]]), SAMPLE_RATE)
    return Clip("jfk-in-silence", path, developer_clips()[0].reference)


def recording_sets(work: Path) -> dict[str, list[Clip]]:
    rng = np.random.default_rng(0)
    developer = developer_clips()
    paused = [paused_recording("developer-paused", developer, work, rng), speech_in_silence(work, rng)]
    if CARDS.is_dir():
        paused.append(paused_recording("cards-paused", sphinx_clips(CARDS), work, rng))
    sets = {"developer": developer, "paused": paused, "sounds": sound_clips(work)}
    return {name: clips for name, clips in sets.items() if clips}


def tune_sets(work: Path) -> dict[str, list[Clip]]:
    from edge_asr.models.real_speech import asterisk_clips

    rng = np.random.default_rng(1)
    prompts = [clip for clip in asterisk_clips("tune") if clip.reference]
    quarter = (len(prompts) + 3) // 4
    joined = [paused_recording(f"asterisk-tune-{i}", prompts[i * quarter : (i + 1) * quarter], work, rng)
              for i in range(4)]
    return {"tune-prompts": prompts, "tune-paused": joined}


def modes(variants: list[str]) -> dict[str, tuple]:
    """{mode name: (VadOptions or None, encoder context or None)}: whole, vad, then each variant."""
    from dataclasses import replace

    from edge_asr.runtime.speech_windows import OFFLINE_VAD

    chosen = {"whole": (None, None), "vad": (OFFLINE_VAD, None)}
    for variant in variants:
        settings = dict(part.split("=", 1) for part in variant.split(","))
        context = settings.pop("context", None)
        chosen[variant] = (replace(OFFLINE_VAD, **{k: type(getattr(OFFLINE_VAD, k))(v) for k, v in settings.items()}),
                           context)
    return chosen


def judge(path: Path, sets: dict[str, list[Clip]], threads, variants: list[str] = (), vad=None
          ) -> dict[str, dict[str, dict]]:
    """{mode: {set: figures}} for one bundle; ``threads`` (runtime.threads.Threads) made ``vad``, a SileroVad,
    before any engine."""
    from edge_asr.runtime.engines.timed import TimedEngine
    from edge_asr.runtime.mel import FRAMES_PER_SECOND
    from edge_asr.runtime.transcriber import Transcriber

    transcriber = Transcriber(path, threads=threads, vad=vad)
    transcriber.engine = timed = TimedEngine(transcriber.engine)
    transcriber.transcribe(JFK, transcriber.options())  # warm-up
    results = {}
    for mode, (speech_only, context) in modes(list(variants)).items():
        results[mode] = {}
        options = transcriber.options(encoder_context=context)
        for name, clips in sets.items():
            timed.reset()
            started, texts, audio_s = time.perf_counter(), [], 0.0
            for clip in clips:
                transcript = transcriber.transcribe(clip.path, options, speech_only)
                texts.append(transcript.text)
                audio_s += transcript.duration
            wall = time.perf_counter() - started
            figures = {"clips": len(clips), "audio_s": audio_s, "wall_s": wall,
                       "encoder_window_s_per_audio_s": timed.encoder_frames / FRAMES_PER_SECOND / audio_s,
                       "encoder_s": timed.encoder_seconds, "texts": texts}
            if any(clip.reference for clip in clips):
                figures["wer"] = corpus_wer([(clip.reference, text) for clip, text in zip(clips, texts, strict=True)])
            else:
                figures["words"] = sum(len(normalise(text).split()) for text in texts)
            results[mode][name] = figures
            print(f"speech_only: {path.name} {mode} {name}: {_cell(figures)}, "
                  f"{figures['encoder_window_s_per_audio_s']:.2f} window s/audio s, {wall:.1f} s", file=sys.stderr)
    return results


def _cell(figures: dict) -> str:
    return f"{figures['wer']:.2f} %" if "wer" in figures else f"{figures['words']} words"


def table(results: dict[str, dict[str, dict[str, dict]]]) -> list[str]:
    sets = list(next(iter(next(iter(results.values())).values())))
    lines = ["| bundle | mode | " + " | ".join(f"{name} | window s/s | wall s" for name in sets) + " |",
             "|---|---|" + "---|---|---|" * len(sets)]
    for bundle, modes in results.items():
        for mode, figures in modes.items():
            cells = [f"{_cell(f)} | {f['encoder_window_s_per_audio_s']:.2f} | {f['wall_s']:.1f}"
                     for f in (figures[name] for name in sets)]
            lines.append(f"| {bundle} | {mode} | " + " | ".join(cells) + " |")
    return lines


def save(clips: list[Clip], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        shutil.copy(clip.path, folder / clip.path.name)
    (folder / REFERENCES_NAME).write_text("".join(f"{clip.path.name}\t{clip.reference}\n" for clip in clips))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m edge_asr.benchmarks.speech_only",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", required=True, metavar="NAME=DIR", help="a bundle to measure")
    parser.add_argument("--sets", choices=("judge", "tune"), default="judge",
                        help="judge: the developer clips, paused recordings and sounds; tune: the Asterisk tune prompts")
    parser.add_argument("--vad-variants", nargs="*", default=[], metavar="K=V[,K=V]",
                        help="more modes: VadOptions fields and context=full|utterance")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every transcript and figure here")
    parser.add_argument("--save-paused", type=Path, metavar="DIR",
                        help="also keep the paused recordings in DIR with a references.tsv, for `edge-asr bench --clips`")
    args = parser.parse_args(argv)
    results = {}
    from edge_asr.runtime.streaming.vad import SileroVad
    from edge_asr.runtime.threads import Threads

    try:
        threads = Threads(args.threads)
        vad = SileroVad(threads=threads)  # before any engine: one for every bundle
        with tempfile.TemporaryDirectory(prefix="edge-asr-speech-only-") as work:
            sets = (recording_sets if args.sets == "judge" else tune_sets)(Path(work))
            if args.save_paused:
                save(sets.get("paused") or sets["tune-paused"], args.save_paused)
            for spec in args.bundle:
                name, _, path = spec.partition("=")
                if not path:
                    parser.error(f"expected NAME=DIR, not {spec!r}")
                results[name] = judge(Path(path), sets, threads, args.vad_variants, vad)
    except EdgeAsrError as err:
        print(f"speech_only: {err}", file=sys.stderr)
        return 1
    print("\n".join(table(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
