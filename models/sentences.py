"""Sentences for the voices to read: usage examples from WordNet, short fortunes, or the user's own file,
mixed with generated everyday sentences and short commands (models/phrases.py).

Only book sentences a reader says one way are kept (3 to 25 words, letters and basic punctuation, no
digits, no ALL-CAPS words, one sentence), so the text read is the text to train on. Kept sentences
start with a capital and end with punctuation, the way Whisper writes its transcripts.

Every text belongs to one split by a hash of its words (``sentence_split``): "train", "tune" (for
choosing a recipe) or "heldout" (for judging it), so no sentence of an evaluation is ever trained on,
whatever the seed or the corpus size.
"""
from __future__ import annotations

import random
import re
import zlib
from pathlib import Path

import numpy as np

from edge_asr.models.phrases import everyday_sentence, short_command
from edge_asr.runtime.errors import EdgeAsrError

SPLITS = ("train", "tune", "heldout")
EVERYDAY_SHARE, SHORT_SHARE = 0.25, 0.15  # of the texts read, when no sentence file is given

WORDNET = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
FORTUNES = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("fortunes", "literature", "riddles")
SOURCE_PACKAGES = "apt-get install wordnet-base fortunes-min"
MIN_WORDS, MAX_WORDS = 3, 25

_SAYABLE = re.compile(r"[A-Za-z][A-Za-z ,;:'-]*[A-Za-z][.?!]?")  # terminal punctuation only at the end
_ALL_CAPS = re.compile(r"\b[A-Z]{2,}\b")
_QUOTED = re.compile(r'"([^"]+)"')


def clean_sentence(text: str) -> str | None:
    """The sentence as it is to be read, or None when a reader could say it more than one way."""
    sentence = " ".join(text.split()).strip("'")
    if not _SAYABLE.fullmatch(sentence) or "--" in sentence or _ALL_CAPS.search(sentence):
        return None
    if not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
        return None
    sentence = sentence[0].upper() + sentence[1:]
    return sentence if sentence[-1] in ".?!" else sentence + "."


def wordnet_examples(root: Path = WORDNET) -> list[str]:
    """The quoted usage examples of the glosses (`... | gloss; "he ran the mile"`)."""
    examples = []
    for name in WORDNET_FILES:
        path = root / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.startswith(" "):  # the licence header is indented
                    examples.extend(_QUOTED.findall(line.partition(" | ")[2]))
    return examples


def fortune_entries(root: Path = FORTUNES) -> list[str]:
    """Entries of the fortune files (separated by `%` lines), without their `-- Author` lines."""
    entries = []
    for name in FORTUNE_FILES:
        path = root / name
        if path.is_file():
            for entry in re.split(r"^%$", path.read_text(encoding="utf-8", errors="replace"), flags=re.M):
                body = " ".join(line for line in entry.splitlines() if not line.strip().startswith("--"))
                entries.append(" ".join(body.split()))
    return entries


def installed_sentences() -> list[str]:
    """Every sayable sentence of the installed text sources, deduplicated, in a fixed order."""
    return _unique(filter(None, map(clean_sentence, wordnet_examples() + fortune_entries())))


def file_sentences(path: Path) -> list[str]:
    """The user's sentences, one a line, taken as written (blank lines and repeats skipped)."""
    if not path.is_file():
        raise EdgeAsrError(f"the sentence file {path} does not exist.")
    sentences = _unique(" ".join(line.split()) for line in path.read_text(encoding="utf-8").splitlines())
    if not sentences:
        raise EdgeAsrError(f"the sentence file {path} holds no sentences (one a line).")
    return sentences


def sentence_split(text: str) -> str:
    """The split a text belongs to, from a hash of its lower-case words: a tenth each for tune and heldout."""
    bucket = zlib.crc32(" ".join(re.findall(r"[a-z0-9$]+", text.lower())).encode()) % 20
    return "heldout" if bucket < 2 else "tune" if bucket < 4 else "train"


def sample_sentences(count: int, seed: int, sentence_file: Path | None = None, split: str | None = None) -> list[str]:
    """The first `count` sentences (all when there are fewer) of the file or the installed sources shuffled
    by `seed`, of ``split`` alone unless None: asking for more later extends the same list, so a larger
    corpus extends a smaller one."""
    pool = file_sentences(sentence_file) if sentence_file else installed_sentences()
    if split is not None:
        pool = [sentence for sentence in pool if sentence_split(sentence) == split]
    if not pool:
        raise EdgeAsrError(f"no sentences to read: {SOURCE_PACKAGES}, or pass a sentence file (one a line).")
    random.Random(seed).shuffle(pool)
    return pool[:count]


def mixed_texts(count: int, seed: int, split: str) -> list[str]:
    """``count`` texts of ``split``: book sentences, with EVERYDAY_SHARE generated everyday sentences and
    SHORT_SHARE short commands among them. Text i depends on (seed, i) alone, so more extends the list."""
    if split not in SPLITS:
        raise EdgeAsrError(f"a sentence split is one of {', '.join(SPLITS)}, not {split!r}.")
    book = iter(sample_sentences(count, seed, split=split))
    texts = []
    for index in range(count):
        rng = np.random.default_rng([seed, index, 7])
        kind = rng.random()
        if kind < EVERYDAY_SHARE + SHORT_SHARE:
            make = everyday_sentence if kind < EVERYDAY_SHARE else short_command
            texts.append(next((t for t in (make(rng) for _ in range(50)) if sentence_split(t) == split), None))
        else:
            texts.append(next(book, None))
    return [text for text in texts if text is not None]


def _unique(sentences) -> list[str]:
    seen, kept = set(), []
    for sentence in sentences:
        if sentence and sentence.lower() not in seen:
            seen.add(sentence.lower())
            kept.append(sentence)
    return kept
