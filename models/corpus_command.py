"""`edge-asr corpus`: the command line of models/corpus.py. Importing this module is cheap (no torch, no
voices): `edge-asr` builds every command's parser on each run."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge_asr.runtime.bundle_cache import DEFAULT_MODEL, DEFAULT_PRECISION

SPLITS = ("train", "tune", "heldout")  # models/sentences.py's, named here so that parsing imports no numpy

DESCRIPTION = (
    "Build an offline speech corpus for distillation and fine-tuning: synthetic voices (Piper, eSpeak NG, "
    "Festival, Flite) read sentences from WordNet and fortunes mixed with generated everyday sentences (numbers, "
    "dates, names) and short commands (or --sentence-file), augmented toward real rooms and devices (speed, "
    "reverberation, telephone and cheap-microphone bands, a lossy codec, background sound at 0-30 dB SNR, level); "
    "--nonspeech adds sounds that are not speech; --folder adds audio of your own, labelled by a teacher. "
    "--split tune|heldout builds an evaluation set from sentences (and, for heldout, voices) that training never "
    "reads. Writes 16 kHz mono PCM16 WAVs and DIR/manifest.jsonl; a rerun skips the examples already written.")


def add_corpus_parser(commands) -> None:
    co = commands.add_parser("corpus", help="build a speech corpus for distillation and fine-tuning",
                             description=DESCRIPTION)
    co.add_argument("--out", type=Path, required=True, metavar="DIR", help="the corpus folder (made or resumed)")
    co.add_argument("--sentences", type=_at_least_zero(int), default=1000, metavar="N",
                    help="synthetic examples: sentences read, one voice each (default: %(default)s)")
    co.add_argument("--nonspeech", type=_at_least_zero(int), default=0, metavar="N",
                    help="examples of non-speech: noise, tones, beeps, chimes, clicks, hum, chords, breathing, "
                    "near silence (default: %(default)s)")
    co.add_argument("--real", type=_names, default=(), metavar="LIST",
                    help="sets of real recorded speech, their clips of the --split: asterisk (the Asterisk PBX prompts, "
                    "apt-get install asterisk-core-sounds-en-wav) (default: none)")
    co.add_argument("--split", choices=SPLITS, default="train",
                    help="train: the training sentences and voices; tune: other sentences, same voices (to choose a "
                    "recipe on); heldout: a third set of sentences read by voices never trained on (to judge it) "
                    "(default: %(default)s)")
    co.add_argument("--voices", type=_names, metavar="LIST",
                    help="comma-separated, from piper, espeak-ng, festival, flite (default: every installed one)")
    co.add_argument("--sentence-file", type=Path, metavar="F", help="your sentences, one a line, instead of "
                    "WordNet's usage examples and fortunes")
    co.add_argument("--folder", type=Path, metavar="DIR", help="your own audio (any format, any rate), "
                    "labelled by the teacher")
    co.add_argument("--references", type=Path, metavar="TSV", help="transcripts of the --folder clips, "
                    "`name<TAB>text` per line: a pseudo-label further than --max-wer from its transcript is "
                    "dropped (default: DIR/references.tsv when there)")
    co.add_argument("--teacher", default=DEFAULT_MODEL, metavar="MODEL_OR_BUNDLE",
                    help="the model that makes pseudo-labels: a zoo name, a checkpoint or a bundle directory "
                    "(default: %(default)s)")
    co.add_argument("--pseudo-label", action="store_true",
                    help="label the synthetic examples with the teacher too, dropping those beyond --max-wer")
    co.add_argument("--max-wer", type=_at_least_zero(float), default=10.0, metavar="PERCENT",
                    help="the largest WER of a pseudo-label against its reference (default: %(default)s)")
    co.add_argument("--seed", type=int, default=0, help="sentences, voices and augmentation (default: %(default)s)")
    co.add_argument("--noise-probability", type=float, metavar="P",
                    help="share of synthetic examples with background sound at 0-30 dB SNR (default: 0.6)")


def run(args) -> int:
    from edge_asr.models.augment import AugmentOptions
    from edge_asr.models.corpus import DROPPED, CorpusOptions, build_corpus

    augment = (AugmentOptions() if args.noise_probability is None
               else AugmentOptions(noise_probability=args.noise_probability))
    options = CorpusOptions(args.sentences, args.nonspeech, args.real, args.split, args.voices, args.sentence_file,
                            args.folder, args.references, args.pseudo_label, args.max_wer, args.seed, augment)
    options.validate()
    labeller = teacher(args.teacher) if options.needs_teacher() else None
    progress = ProgressLine()
    try:
        summary = build_corpus(args.out, options, labeller, log=_log, progress=progress)
    finally:  # an interruption is reported on a line of its own
        progress.finish()
    totals = summary.by_source()
    print(f"corpus: {len(summary.entries)} examples, {sum(h for _, h in totals.values()):.2f} h, in "
          f"{args.out}: {summary.written} written now, {summary.already_done} done before")
    for source, (count, hours) in sorted(totals.items()):
        print(f"  {source:10} {count:6} examples {hours:7.2f} h")
    if summary.dropped:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in summary.dropped.most_common())
        print(f"  dropped {sum(summary.dropped.values())} ({reasons}); their ids are in {args.out / DROPPED}")
    return 0


def teacher(model_or_bundle: str):
    """A labeller transcribing with a bundle directory, or with a model compiled once into the cache."""
    from edge_asr.runtime.bundle import MANIFEST
    from edge_asr.runtime.bundle_cache import cached_bundle
    from edge_asr.runtime.transcriber import Transcriber

    path = Path(model_or_bundle)
    bundle = path if (path / MANIFEST).is_file() else cached_bundle(model_or_bundle, DEFAULT_PRECISION)
    transcriber = Transcriber(bundle)
    options = transcriber.options()
    return lambda audio: transcriber.transcribe(audio, options).text


class ProgressLine:
    """Examples done, rate and ETA on stderr: rewritten in place on a terminal, a line every 30 s otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty()
        self.start = self.shown = time.monotonic()
        self.rewriting = False  # a line without its newline is on the terminal

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0:  # the voices are loaded: the rate counts from here
            self.start = self.shown = now
            return
        if now - self.shown < (0.5 if self.tty else 30) and done < total:
            return
        self.shown = now
        rate = done / max(now - self.start, 1e-9)
        eta = time.strftime("%H:%M:%S", time.gmtime((total - done) / rate))
        line = f"corpus: {done}/{total} examples, {rate:.2f}/s, ETA {eta}"
        print("\r" + line if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        self.rewriting = self.tty

    def finish(self) -> None:
        if self.rewriting:
            print(file=sys.stderr)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _at_least_zero(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
        return value

    return parse
