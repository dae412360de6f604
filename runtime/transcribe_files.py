"""`edge-asr transcribe`: many files, one bundle; a bad file costs only itself, partial work is kept."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from edge_asr.runtime.audio import SAMPLE_RATE, AudioFile, damage_report
from edge_asr.runtime.errors import AudioError, EdgeAsrError
from edge_asr.runtime.formats import render
from edge_asr.runtime.transcriber import Transcriber
from edge_asr.runtime.transcript import Transcript


class Progress:
    """One self-rewriting stderr line per file, only on a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()

    def update(self, name: str, done: float, total: float) -> None:
        if self.enabled:
            print(f"\r{name}: {min(done, total):6.1f} / {total:.1f} s ({100 * min(done / total, 1):3.0f}%)",
                  end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def output_names(files: list[Path], fmt: str) -> dict[Path, str]:
    """Each input's output file name in --output: its stem and the format, numbered where stems repeat
    (a/good.wav and b/good.wav write good.txt and good-2.txt), so no transcript overwrites another."""
    names, used = {}, set()
    for path in files:
        name, number = f"{path.stem}.{fmt}", 1
        while name in used:
            number += 1
            name = f"{path.stem}-{number}.{fmt}"
        used.add(name)
        names[path] = name
    return names


def check_output(directory: Path) -> None:
    """--output must be a directory this process can write, checked before any audio is transcribed."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdgeAsrError(f"cannot make the output directory {directory}: {err.strerror or err}.") from None
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise EdgeAsrError(f"the output directory {directory} is not a directory this user can write to.")


def transcribe_files(bundle: Path, args) -> int:
    if args.output is not None:
        check_output(args.output)
        args.output_names = output_names(args.files, args.format)
        renamed = [f"{path} -> {name}" for path, name in args.output_names.items() if name != f"{path.stem}.{args.format}"]
        if renamed:
            print(f"edge-asr: inputs share a name; numbered outputs: {', '.join(renamed)}", file=sys.stderr)
    transcriber = Transcriber(bundle, threads=args.threads)
    options = transcriber.options(beam_size=args.beam, language=args.language, task=args.task,
                                  encoder_context=args.encoder_context)
    progress = Progress(not args.no_progress)
    failures = 0
    for path in args.files:
        transcript = Transcript(file=str(path), language=args.language or "", duration=0.0)
        ok, audio = True, None
        try:
            audio = AudioFile(path)
            mel = transcriber.features(audio)  # a first pass over the file: its length, its peak, any damage
            transcript.duration, transcript.complete = mel.samples / SAMPLE_RATE, not audio.damage
            for window in transcriber.windows(mel, options):
                transcript.language = window.language
                transcript.segments.extend(window.segments)
                progress.update(path.name, window.end, transcript.duration)
        except EdgeAsrError as err:
            ok, transcript.complete = _report(err), False
        except KeyboardInterrupt:
            progress.finish()
            transcript.complete = False
            _keep(transcript, args)
            print(f"edge-asr: interrupted; {path} is transcribed up to {_last_end(transcript):.1f} s", file=sys.stderr)
            return 130
        progress.finish()
        if ok or transcript.segments:  # a file that failed midway keeps the text already heard
            ok = _keep(transcript, args) and ok
        if ok and audio is not None and audio.damage:  # what decoded is kept; the exit status says it was not all
            ok = _report(AudioError(damage_report(audio)))
        failures += not ok
    return 1 if failures else 0


def _report(err: EdgeAsrError) -> bool:
    print(f"edge-asr: {err}", file=sys.stderr)
    return False


def _keep(transcript: Transcript, args) -> bool:
    try:
        _emit(transcript, args)
        return True
    except EdgeAsrError as err:
        return _report(err)


def _last_end(transcript: Transcript) -> float:
    return transcript.segments[-1].end if transcript.segments else 0.0


def _emit(transcript: Transcript, args) -> None:
    text = render(transcript, args.format)
    if text and not text.endswith("\n"):
        text += "\n"
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = args.output / args.output_names[Path(transcript.file)]
    try:
        target.write_text(text)
    except OSError as err:  # the text is not lost: it goes to stdout instead
        sys.stdout.write(text)
        sys.stdout.flush()
        raise EdgeAsrError(f"cannot write {target} ({err.strerror or err}): its text went to stdout instead.") from None
