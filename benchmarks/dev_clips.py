"""The developer clips: JFK (shipped in tests/data) and the LibriVox clips of Debian pocketsphinx-testdata."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JFK = REPO / "tests" / "data" / "jfk.wav"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CARDS = Path("/usr/share/pocketsphinx/test/data/cards")


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    reference: str


def sphinx_clips(folder: Path) -> list[Clip]:
    """Clips listed in a pocketsphinx `transcription` file: `<s> words </s> (file-id)` per line."""
    listing = folder / "transcription" if (folder / "transcription").is_file() else next(folder.glob("*.transcription"), None)
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
