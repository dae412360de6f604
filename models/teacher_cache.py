"""A corpus turned into training examples once: features, label tokens and the teacher's top-k logits.

Without a cache every epoch pays the teacher's 30 s encoder pass again (half a second per example on
the 2-core development CPU, more than the student's own step). The cache keeps, per example, the Mel
frames of its audio (see ``distill_data``), its tokens and the teacher's k largest logits at each
predicted position. The tokens are the corpus text ("reference" labels, for fine-tuning on a domain's
words), or the teacher's own decoding with its encoder output ("teacher" labels, models/teacher_labels.py,
for distilling a student that behaves as its teacher, on non-speech too). It is written in shards as it
goes, so an interrupted build resumes at the first missing shard, and it is keyed by the teacher's sha256,
k and the kind of labels, so another teacher never reads a stale cache.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from edge_asr.models.distill_data import Example, collate, example_from_audio
from edge_asr.models.distill_loss import IGNORE_INDEX
from edge_asr.models.teacher_labels import label_plans, teacher_labelled
from edge_asr.models.whisper_torch import WhisperModel
from edge_asr.runtime.audio import SAMPLE_RATE, load_audio
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.mel import N_SAMPLES, LogMelFrontend
from edge_asr.runtime.tokenizer import WhisperTokenizer

SHARD_SIZE = 256
TEACHER_BATCH = 8


JOIN_GAP_S = 0.4  # silence between the utterances of a joined example, a speaker's pause


@dataclass(frozen=True)
class LabelledAudio:
    """What the cache needs of a corpus entry: a name, its audio file and the text to learn. Several
    files are one example, read one after another with a short pause, their texts joined."""

    id: str
    audio: Path | tuple[Path, ...]
    text: str

    def samples(self) -> np.ndarray:
        paths = (self.audio,) if isinstance(self.audio, Path) else self.audio
        gap = np.zeros(round(JOIN_GAP_S * SAMPLE_RATE), dtype=np.float32)
        parts = [part for path in paths for part in (gap, load_audio(path))][1:]
        return np.concatenate(parts)


def joined(entries: Sequence[LabelledAudio], seconds: Sequence[float], size: int, seed: int) -> list[LabelledAudio]:
    """Every entry (of ``seconds`` of audio) once more, in random groups of ``size`` read as one example: a
    corpus of short sentences then also teaches the windows of longer utterances. Groups longer than
    30 s are left out."""
    order = np.random.default_rng(seed).permutation(len(entries))
    groups = []
    for first in range(0, len(order) - size + 1, size):
        members = [entries[i] for i in order[first : first + size]]
        if sum(seconds[i] for i in order[first : first + size]) + (size - 1) * JOIN_GAP_S > N_SAMPLES / SAMPLE_RATE:
            continue
        groups.append(LabelledAudio("+".join(m.id for m in members), tuple(m.audio for m in members),
                                    " ".join(m.text.strip() for m in members)))
    return groups


def label_tokens(tokenizer: WhisperTokenizer, text: str) -> tuple[tuple[int, ...], int]:
    """(tokens, n_prompt): start of transcript (and language, task), no-timestamps, the text, end of text."""
    prompt = (*tokenizer.sot_sequence("en", "transcribe"), tokenizer.no_timestamps)
    return (*prompt, *tokenizer.encode(" " + text.strip()), tokenizer.eot), len(prompt)


@dataclass(frozen=True)
class TeacherLabelling:
    """Label with the teacher's own decoding (models/teacher_labels.py): its plans drawn from ``seed``,
    its decoding suppressing the checkpoint's ``suppress_tokens``."""

    seed: int = 0
    suppress_tokens: tuple[int, ...] = (-1,)


def cache_directory(corpus: Path, teacher_sha256: str, k: int, teacher_labels: bool = False) -> Path:
    """Where a corpus keeps its examples for one teacher and k; k 0: features and labels alone."""
    kind = f"teacher-top{k}" if teacher_labels else f"top{k}" if k else "labels"
    return Path(corpus) / "cache" / f"{teacher_sha256[:16]}-{kind}"


def cached_examples(
    entries: Sequence[LabelledAudio],
    directory: Path,
    tokenizer: WhisperTokenizer,
    teacher: WhisperModel | None = None,
    k: int = 0,
    n_mels: int = 80,
    log: Callable[[str], None] = print,
    labelling: TeacherLabelling | None = None,
) -> list[Example]:
    """The entries as Examples, carrying the teacher's top-k when ``k`` > 0 (and, with ``labelling``, its own
    tokens and encoder output instead of the entries' texts), computing the shards not yet on disk (which
    needs the teacher when k > 0). Entries whose teacher decoding looped are left out."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if labelling is not None and not k:
        raise EdgeAsrError("teacher labels come with the teacher's top-k: give k above 0.")
    _check_listing(directory, entries, k, labelling)
    plans = label_plans([e.text for e in entries], labelling.seed) if labelling else None
    frontend = LogMelFrontend(n_mels)
    examples: list[Example] = []
    started, done = time.monotonic(), 0
    for number, first in enumerate(range(0, len(entries), SHARD_SIZE)):
        shard = directory / f"shard-{number:05d}.npz"
        if not shard.is_file():
            if k and teacher is None:
                raise EdgeAsrError(f"{shard} is missing, and computing the teacher's top-k logits needs the teacher.")
            members = entries[first : first + SHARD_SIZE]
            if labelling is None:
                made = _examples(members, tokenizer, frontend, teacher if k else None, k)
            else:
                features = _examples(members, tokenizer, frontend, None, 0)
                made = [e for e in teacher_labelled(features, plans[first : first + SHARD_SIZE], teacher, tokenizer, k,
                                                    labelling.suppress_tokens) if e is not None]
            _write_shard(shard, made)
            done += len(members)
            rate = done / (time.monotonic() - started)
            left = (len(entries) - first - len(members)) / rate
            log(f"example cache: {first + len(members)}/{len(entries)} examples, {rate:.1f}/s, {left / 60:.0f} min left")
        examples += _read_shard(shard)
    return examples


def _check_listing(directory: Path, entries: Sequence[LabelledAudio], k: int, labelling) -> None:
    """The cache belongs to exactly these entries, in this order; a different corpus gets a clear refusal."""
    listing = directory / "entries.json"
    wanted = {"k": k, "ids": [e.id for e in entries], "texts": [e.text for e in entries]}
    if labelling is not None:
        wanted["labelling"] = {"seed": labelling.seed, "suppress_tokens": list(labelling.suppress_tokens)}
    if listing.is_file():
        if json.loads(listing.read_text()) != wanted:
            raise EdgeAsrError(f"{directory} caches another set of examples: delete it to rebuild.")
        return
    listing.write_text(json.dumps(wanted))


def _examples(members: Sequence[LabelledAudio], tokenizer: WhisperTokenizer, frontend: LogMelFrontend,
              teacher: WhisperModel | None, k: int) -> list[Example]:
    examples = []
    for entry in members:
        tokens, n_prompt = label_tokens(tokenizer, entry.text)
        examples.append(example_from_audio(entry.samples(), tokens, n_prompt, frontend))
    if teacher is None:
        return examples
    out = []
    for first in range(0, len(examples), TEACHER_BATCH):
        batch = examples[first : first + TEACHER_BATCH]
        tops = _top_k(teacher, batch, k)
        out += [Example(e.mel, e.audio_frames, e.tokens, e.n_prompt, top) for e, top in zip(batch, tops, strict=True)]
    return out


@torch.no_grad()
def _top_k(teacher: WhisperModel, batch: Sequence[Example], k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per example, the teacher's top-k at each predicted position, reading the 30 s padded window."""
    stacked = collate(batch, margin_s=None)
    scored = teacher.eval().logits(stacked.student_mel, stacked.tokens)[stacked.labels != IGNORE_INDEX].float()
    values, indices = scored.topk(k, dim=-1)  # label order: example by example
    ends = np.cumsum([len(e.tokens) - e.n_prompt for e in batch])[:-1]
    indices = np.split(indices.numpy().astype(np.int32), ends)
    return list(zip(indices, np.split(values.numpy().astype(np.float16), ends), strict=True))


def _write_shard(path: Path, examples: Sequence[Example]) -> None:
    """One .npz of concatenated arrays with offsets, written beside and renamed (never half a shard)."""
    if not examples:  # every member looped: an empty shard still says it is done
        np.savez(path.with_suffix(".partial.npz"), empty=np.zeros(0))
        path.with_suffix(".partial.npz").replace(path)
        return
    frames = np.cumsum([0] + [e.mel.shape[1] for e in examples])
    lengths = np.cumsum([0] + [len(e.tokens) for e in examples])
    scored = np.cumsum([0] + [len(e.tokens) - e.n_prompt for e in examples])
    partial = path.with_suffix(".partial.npz")
    np.savez(
        partial,
        mel=np.concatenate([e.mel for e in examples], axis=1), frames=frames,
        tokens=np.array([t for e in examples for t in e.tokens], dtype=np.int32), lengths=lengths,
        n_prompt=np.array([e.n_prompt for e in examples]), audio_frames=np.array([e.audio_frames for e in examples]),
        scored=scored, **_stacked_top(examples), **_stacked_encoded(examples),
    )
    partial.replace(path)


def _stacked_top(examples: Sequence[Example]) -> dict[str, np.ndarray]:
    if examples[0].teacher_top is None:
        return {}
    return {"top_indices": np.concatenate([e.teacher_top[0] for e in examples]),
            "top_logits": np.concatenate([e.teacher_top[1] for e in examples])}


def _stacked_encoded(examples: Sequence[Example]) -> dict[str, np.ndarray]:
    if examples[0].teacher_encoded is None:
        return {}
    return {"encoded": np.concatenate([e.teacher_encoded for e in examples]),
            "encoded_offsets": np.cumsum([0] + [len(e.teacher_encoded) for e in examples])}


def _read_shard(path: Path) -> list[Example]:
    try:
        data = dict(np.load(path))
    except (OSError, ValueError, EOFError) as err:
        raise EdgeAsrError(f"{path} is not a readable cache shard ({err}): delete it to rebuild it.") from None
    if "empty" in data:
        return []
    f, n, s = data["frames"], data["lengths"], data["scored"]
    top, e = "top_indices" in data, data.get("encoded_offsets")
    return [
        Example(
            mel=data["mel"][:, f[i] : f[i + 1]], audio_frames=int(data["audio_frames"][i]),
            tokens=tuple(int(t) for t in data["tokens"][n[i] : n[i + 1]]), n_prompt=int(data["n_prompt"][i]),
            teacher_top=(data["top_indices"][s[i] : s[i + 1]], data["top_logits"][s[i] : s[i + 1]]) if top else None,
            teacher_encoded=None if e is None else data["encoded"][e[i] : e[i + 1]],
        )
        for i in range(len(f) - 1)
    ]
