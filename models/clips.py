"""Clip sets to measure on: the developer clips, or a folder of audio with optional references.

The developer clips are JFK (shipped in tests/data) and the LibriVox clips of Debian
pocketsphinx-testdata. A folder holds audio files (any format soundfile reads) and, optionally, a
references file: TSV lines `name<TAB>text`, where name is the file's name or stem.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge_asr.runtime.errors import EdgeAsrError

REPO = Path(__file__).resolve().parent.parent
JFK = REPO / "tests" / "data" / "jfk.wav"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CARDS = Path("/usr/share/pocketsphinx/test/data/cards")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")
REFERENCES_NAME = "references.tsv"


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    reference: str | None


def sphinx_clips(folder: Path) -> list[Clip]:
    """Clips listed in a pocketsphinx `transcription` file: `<s> words </s> (file-id)` per line."""
    listing = folder / "transcription"
    if not listing.is_file():
        listing = next(folder.glob("*.transcription"), None)
    if listing is None:
        return []
    clips = []
    for line in listing.read_text().splitlines():
        match = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\((\S+)\)\s*$", line)
        if match and (folder / f"{match[2]}.wav").is_file():
            clips.append(Clip(match[2], folder / f"{match[2]}.wav", match[1].strip()))
    return clips


def developer_clips() -> list[Clip]:
    """JFK plus the LibriVox clips when pocketsphinx-testdata is installed (apt-get install pocketsphinx-testdata)."""
    return [Clip("jfk", JFK, JFK_TEXT), *sphinx_clips(LIBRIVOX)]


def read_references(path: Path) -> dict[str, str]:
    """`name<TAB>text` lines; blank lines and lines starting with # are skipped."""
    references = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, tab, text = line.partition("\t")
        if not tab:
            raise EdgeAsrError(f"{path}, line {number}: expected `name<TAB>text`.")
        references[name.strip()] = text.strip()
    return references


def folder_clips(folder: Path, references: Path | None = None) -> list[Clip]:
    """The audio files of a folder in name order, each with its reference when the TSV has one.

    Without an explicit references file, `references.tsv` in the folder is used when present.
    """
    if not folder.is_dir():
        raise EdgeAsrError(f"{folder} is not a folder of audio clips.")
    if references is None and (folder / REFERENCES_NAME).is_file():
        references = folder / REFERENCES_NAME
    if references is not None and not references.is_file():
        raise EdgeAsrError(f"the references file {references} does not exist.")
    texts = read_references(references) if references else {}
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not paths:
        raise EdgeAsrError(f"{folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)}).")
    known = {p.name for p in paths} | {p.stem for p in paths}
    unknown = sorted(set(texts) - known)
    if unknown:
        raise EdgeAsrError(f"{references} names clips that are not in {folder}: {', '.join(unknown[:5])}.")
    return [Clip(p.stem, p, texts.get(p.name, texts.get(p.stem))) for p in paths]
