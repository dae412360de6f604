"""An offline speech corpus for distillation and fine-tuning: synthetic voices reading sentences, with
augmentation, non-speech sounds, plus a folder of the user's own audio; 16 kHz mono PCM16 WAVs and a
JSONL manifest.

A corpus is built for one split (models/sentences.py, models/voices.py): "train" reads the training
sentences with the training voices; "tune" reads other sentences with the same voices, for choosing a
recipe; "heldout" reads a third set of sentences with voices never trained on, for judging it.

`DIR/manifest.jsonl` holds one CorpusEntry a line, appended and flushed as each example is written, so
an interrupted build loses nothing and a rerun skips every id already there (and every id in
`DIR/dropped.jsonl`, the examples the WER filter or the length limits turned away; delete that file
to try them again). Ids carry the source, the seed and the sentence's index, and each example draws
from its own generator seeded by (seed, index): sentence, voice, speed, pitch, noise and level are the
same in every build with that seed. So is the audio, except that Piper's own noise (sampled inside its
graph, see models/voices.py) depends on what was read before in the run: a resumed build's Piper
examples sound slightly different from a fresh build's.

Labels: the sentence read or the folder's transcript ("reference"), or a teacher's transcript
("pseudo"). A pseudo-label with a reference beside it is kept only when its WER against the
reference is at most max_wer (distil-whisper keeps 10 %).
"""
from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import soundfile as sf

from edge_asr.models.clips import Clip, folder_clips
from edge_asr.models.augment import AugmentOptions, augment
from edge_asr.models.nonspeech import nonspeech
from edge_asr.models.real_speech import REAL_SETS, real_clips
from edge_asr.models.sentences import SPLITS, mixed_texts, sample_sentences
from edge_asr.models.voices import SOURCES, load_voices
from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.errors import AudioError, EdgeAsrError

MANIFEST = "manifest.jsonl"
DROPPED = "dropped.jsonl"
MIN_SECONDS, MAX_SECONDS = 0.3, 30.0

Labeller = Callable[[np.ndarray], str]  # 16 kHz float32 audio -> the teacher's transcript


@dataclass(frozen=True)
class CorpusEntry:
    id: str
    audio: str  # relative to the corpus folder
    text: str  # the label to train on
    reference: str | None  # the sentence read or the folder's transcript
    source: str  # piper | espeak-ng | festival | flite | nonspeech | folder
    voice: str | None  # the voice, or the kind of non-speech
    speed: float  # tempo relative to the voice's default, speed perturbation included
    pitch: float | None  # the voice's own pitch setting (see models/voices.py)
    snr_db: float | None  # None: clean
    duration_s: float
    label_kind: str  # reference | pseudo
    pseudo_wer: float | None  # percent, when a pseudo-label was checked against a reference
    effects: str | None = None  # augmentation beyond speed and level, comma-separated (models/augment.py)


@dataclass(frozen=True)
class CorpusOptions:
    sentences: int = 1000
    nonspeech: int = 0  # examples of non-speech sound (models/nonspeech.py)
    real: tuple[str, ...] = ()  # sets of real recorded speech (models/real_speech.py), their clips of the split
    split: str = "train"  # train | tune | heldout: which sentences and voices
    voices: tuple[str, ...] | None = None  # None: every installed voice
    sentence_file: Path | None = None
    folder: Path | None = None
    references: Path | None = None  # the folder's transcripts (default: FOLDER/references.tsv when there)
    pseudo_label: bool = False  # label the synthetic examples with the teacher too
    max_wer: float = 10.0
    seed: int = 0
    augment: AugmentOptions = field(default_factory=AugmentOptions)

    def validate(self) -> None:
        if self.sentences < 0 or self.nonspeech < 0:
            raise EdgeAsrError(f"sentences and nonspeech must be at least 0, not {self.sentences} and {self.nonspeech}.")
        if self.sentences == 0 and self.nonspeech == 0 and not self.real and self.folder is None:
            raise EdgeAsrError("nothing to build: ask for some sentences, non-speech or real speech, or give a "
                               "folder of audio.")
        unknown_real = sorted(set(self.real) - set(REAL_SETS))
        if unknown_real:
            raise EdgeAsrError(f"unknown set of real speech {', '.join(unknown_real)}: choose from {', '.join(REAL_SETS)}.")
        if self.split not in SPLITS:
            raise EdgeAsrError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}.")
        unknown = sorted(set(self.voices or ()) - set(SOURCES))
        if unknown:
            raise EdgeAsrError(f"unknown voice {', '.join(unknown)}: choose from {', '.join(SOURCES)}.")
        if self.references is not None and self.folder is None:
            raise EdgeAsrError("references are the transcripts of a folder's clips: give the folder too.")
        if self.max_wer < 0:
            raise EdgeAsrError(f"max_wer is a WER in percent: at least 0, not {self.max_wer}.")
        self.augment.validate()

    def needs_teacher(self) -> bool:
        return self.pseudo_label or self.folder is not None


@dataclass(frozen=True)
class Recording:
    """An example's audio and how it was made, before it is labelled."""

    audio: np.ndarray
    source: str
    voice: str | None = None
    speed: float = 1.0
    pitch: float | None = None
    snr_db: float | None = None
    effects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    id: str
    reference: str | None
    use_teacher: bool
    record: Callable[[], Recording]


@dataclass(frozen=True)
class Drop:
    """Why an example was not written, with the teacher's label when that was the reason."""

    reason: str
    pseudo_label: str | None = None
    pseudo_wer: float | None = None


@dataclass(frozen=True)
class CorpusSummary:
    entries: list[CorpusEntry]
    written: int
    already_done: int
    dropped: Counter  # reason: count, this run

    def by_source(self) -> dict[str, tuple[int, float]]:
        """source: (examples, hours of audio)."""
        totals: dict[str, tuple[int, float]] = {}
        for entry in self.entries:
            count, seconds = totals.get(entry.source, (0, 0.0))
            totals[entry.source] = (count + 1, seconds + entry.duration_s)
        return {source: (count, seconds / 3600) for source, (count, seconds) in totals.items()}


def build_corpus(out: Path, options: CorpusOptions, labeller: Labeller | None = None,
                 log: Callable[[str], None] = lambda message: None,
                 progress: Callable[[int, int], None] = lambda done, total: None) -> CorpusSummary:
    """Write the examples of `options` into `out` that are not there yet; `progress(done, total)` before
    the first and after each."""
    options.validate()
    if options.needs_teacher() and labeller is None:
        raise EdgeAsrError("pseudo-labels (a folder of audio, or pseudo_label) need a teacher to label with.")
    jobs = _folder_jobs(options) if options.folder else []
    for name in options.real:
        jobs = _real_jobs(options, name) + jobs
    if options.nonspeech:
        jobs = _nonspeech_jobs(options) + jobs
    if options.sentences:
        jobs = _synthetic_jobs(options, log) + jobs
    (out / "audio").mkdir(parents=True, exist_ok=True)
    done = _ids(out / MANIFEST) | _ids(out / DROPPED)
    todo = [job for job in jobs if job.id not in done]
    dropped: Counter = Counter()
    progress(0, len(todo))
    with open(out / MANIFEST, "a", encoding="utf-8") as manifest, open(out / DROPPED, "a", encoding="utf-8") as drops:
        for number, job in enumerate(todo, 1):
            try:
                made = _make_example(out, job, labeller if job.use_teacher else None, options.max_wer)
            except AudioError as err:  # one bad file of the user's folder costs only itself
                log(f"corpus: skipping {job.id}: {err}")
                made = Drop("unreadable audio")
            if isinstance(made, CorpusEntry):
                _append(manifest, asdict(made))
            else:
                dropped[made.reason] += 1
                _append(drops, {"id": job.id, "reference": job.reference, **asdict(made)})
            progress(number, len(todo))
    written = len(todo) - sum(dropped.values())
    return CorpusSummary(read_manifest(out), written, len(jobs) - len(todo), dropped)


def read_manifest(folder: Path) -> list[CorpusEntry]:
    """The entries of a corpus folder, each checked to name a WAV that is there."""
    path = folder / MANIFEST
    if not path.is_file():
        raise EdgeAsrError(f"{folder} holds no {MANIFEST}: build a corpus there with `edge-asr corpus --out {folder}`.")
    names = {f.name for f in fields(CorpusEntry)}
    required = {f.name for f in fields(CorpusEntry) if f.default is MISSING}
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not required <= set(record) <= names:
                raise ValueError(f"expected the keys {', '.join(sorted(names))}")
        except ValueError as err:
            raise EdgeAsrError(f"{path}, line {number}, is not a corpus entry ({err}).") from None
        entry = CorpusEntry(**record)
        if not (folder / entry.audio).is_file():
            raise EdgeAsrError(f"{path}, line {number}, names {entry.audio}, which is missing from {folder}.")
        entries.append(entry)
    return entries


def _synthetic_jobs(options: CorpusOptions, log) -> list[Job]:
    """Sentence i is read by voice i mod len(voices), drawing from a generator seeded by (seed, i)."""
    voices = load_voices(options.voices, options.seed, log, "heldout" if options.split == "heldout" else "train")
    if options.sentence_file:  # the user's own sentences, all of them whatever the split
        sentences = sample_sentences(options.sentences, options.seed, options.sentence_file)
    else:
        sentences = mixed_texts(options.sentences, options.seed, options.split)
    if len(sentences) < options.sentences:
        log(f"corpus: only {len(sentences)} sentences to read, not {options.sentences}")

    def job(index: int, sentence: str) -> Job:
        voice = voices[index % len(voices)]

        def record() -> Recording:
            rng = np.random.default_rng([options.seed, index])
            reading = voice.read(sentence, rng)
            augmented = augment(reading.audio, rng, options.augment)
            return Recording(augmented.audio, voice.source, reading.voice, reading.speed * augmented.speed,
                             reading.pitch, augmented.snr_db, augmented.effects)

        return Job(_job_id(voice.source, options, index), sentence, options.pseudo_label, record)

    return [job(index, sentence) for index, sentence in enumerate(sentences)]


def _nonspeech_jobs(options: CorpusOptions) -> list[Job]:
    """Non-speech example i draws its kind, length and level from a generator seeded by (seed, split, i)."""

    def job(index: int) -> Job:
        def record() -> Recording:
            audio, kind = nonspeech(np.random.default_rng([options.seed, SPLITS.index(options.split), index, 1]))
            return Recording(audio, "nonspeech", kind)

        return Job(_job_id("nonspeech", options, index), "", False, record)

    return [job(index) for index in range(options.nonspeech)]


def _real_jobs(options: CorpusOptions, name: str) -> list[Job]:
    """The set's clips of the split, augmented as the synthetic speech is, each from a generator seeded by
    (seed, its name)."""

    def job(clip: Clip) -> Job:
        def record() -> Recording:
            rng = np.random.default_rng([options.seed, zlib.crc32(clip.name.encode())])
            augmented = augment(load_audio(clip.path), rng, options.augment)
            return Recording(augmented.audio, name, None, augmented.speed, None, augmented.snr_db, augmented.effects)

        return Job(f"{name}-{options.split}-s{options.seed}-{clip.name.replace('/', '_')}", clip.reference,
                   options.pseudo_label and bool(clip.reference), record)

    return [job(clip) for clip in real_clips(name, options.split)]


def _job_id(source: str, options: CorpusOptions, index: int) -> str:
    split = "" if options.split == "train" else f"{options.split}-"
    return f"{source}-{split}s{options.seed}-{index:06d}"


def _folder_jobs(options: CorpusOptions) -> list[Job]:
    clips = folder_clips(options.folder, options.references)

    def job(clip: Clip) -> Job:
        return Job(f"folder-{clip.path.name}", clip.reference, True, lambda: Recording(load_audio(clip.path), "folder"))

    return [job(clip) for clip in clips]


def _make_example(out: Path, job: Job, labeller: Labeller | None, max_wer: float) -> CorpusEntry | Drop:
    """The entry of a written example, or why it was dropped."""
    recording = job.record()
    duration = len(recording.audio) / SAMPLE_RATE
    if duration < MIN_SECONDS:
        return Drop(f"shorter than {MIN_SECONDS:g} s")
    if duration > MAX_SECONDS:
        return Drop(f"longer than {MAX_SECONDS:g} s")
    text, kind, wer = job.reference, "reference", None
    if labeller is not None:
        text, kind = labeller(recording.audio).strip(), "pseudo"
        if not text:
            return Drop("empty pseudo-label", text)
        if job.reference is not None:
            wer = pseudo_label_wer(job.reference, text)
            if wer > max_wer:
                return Drop(f"pseudo-label WER above {max_wer:g} %", text, round(wer, 2))
    audio = f"audio/{job.id}.wav"
    partial = out / f"{audio}.partial"
    sf.write(partial, recording.audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(partial, out / audio)
    return CorpusEntry(job.id, audio, text, job.reference, recording.source, recording.voice,
                       round(recording.speed, 3), recording.pitch,
                       None if recording.snr_db is None else round(recording.snr_db, 1), round(duration, 3),
                       kind, None if wer is None else round(wer, 2), ",".join(recording.effects) or None)


def pseudo_label_wer(reference: str, pseudo_label: str) -> float:
    """WER in percent after Whisper's English normaliser, as the benchmarks score."""
    from edge_asr.models.wer import corpus_wer

    return corpus_wer([(reference, pseudo_label)])


def _ids(path: Path) -> set[str]:
    """The ids of a JSONL file, cutting off a last line that an interruption left half-written."""
    if not path.is_file():
        return set()
    ids, good = set(), 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):  # written up to the interruption; its example is made again
                break
            try:
                ids.add(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                raise EdgeAsrError(f"{path} is corrupt at byte {good}: move it away or mend that line.") from None
            good += len(line)
    if good < path.stat().st_size:
        os.truncate(path, good)
    return ids


def _append(f, record: dict) -> None:
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
