"""Real recorded speech that a machine can have offline, with its transcripts, for training and tuning.

The Asterisk PBX prompts (Debian `asterisk-core-sounds-en-wav`): about 560 prompts, 25 minutes of one
professional American speaker at 8 kHz, from single digits and letters to long menus, with the
transcripts of `asterisk-core-sounds-en`'s documentation. Prompts transcribed in brackets ("[this is
a simple beep tone]", "(3 seconds of silence)") are not speech: their text is empty. Each prompt belongs to the split of its
transcript (models/sentences.py), so the ones a recipe is tuned or judged on are never trained on.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

from edge_asr.models.clips import Clip
from edge_asr.models.sentences import sentence_split
from edge_asr.runtime.errors import EdgeAsrError

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_INSTALL = "apt-get install asterisk-core-sounds-en-wav"
REAL_SETS = ("asterisk",)


def asterisk_clips(split: str | None = None) -> list[Clip]:
    """The Asterisk prompts that have a transcript, of ``split`` alone unless None (non-speech prompts: by name)."""
    if not ASTERISK_SOUNDS.is_dir() or not ASTERISK_TRANSCRIPTS.is_file():
        raise EdgeAsrError(f"the Asterisk prompts are not installed: {ASTERISK_INSTALL}.")
    clips = []
    for line in gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8", errors="replace"):
        name, colon, text = line.partition(":")
        path = ASTERISK_SOUNDS / f"{name.strip()}.wav"
        if line.startswith(";") or not colon or not path.is_file():
            continue
        text = " ".join(text.split())
        # "[this is a simple beep tone]", "(3 seconds of silence)": not speech. "dollar [$]": the word alone.
        text = "" if text.startswith(("[", "(")) else re.sub(r"\s*\[[^]]*\]", "", text)
        if split is None or sentence_split(text or name) == split:
            clips.append(Clip(name.strip(), path, text))
    return clips


def real_clips(name: str, split: str | None = None) -> list[Clip]:
    """The clips of a real speech set of REAL_SETS."""
    if name != "asterisk":
        raise EdgeAsrError(f"unknown set of real speech {name!r}: choose from {', '.join(REAL_SETS)}.")
    return asterisk_clips(split)
