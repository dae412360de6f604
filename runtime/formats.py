"""A Transcript as the text a user saves: plain text, one JSON object, SRT or WebVTT subtitles."""
from __future__ import annotations

import json

from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.transcript import Segment, Transcript

FORMATS = ("txt", "json", "srt", "vtt")


def render(transcript: Transcript, fmt: str) -> str:
    """The whole file's content in ``fmt``, one of FORMATS."""
    if fmt not in FORMATS:
        raise EdgeAsrError(f"Unknown output format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    return _RENDERERS[fmt](transcript)


def _txt(transcript: Transcript) -> str:
    return "".join(f"{s.text.strip()}\n" for s in transcript.segments)


def _json(transcript: Transcript) -> str:
    document = {
        "file": transcript.file,
        "language": transcript.language,
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "complete": transcript.complete,
        "segments": [
            {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text.strip()}
            for s in transcript.segments
        ],
    }
    return json.dumps(document, ensure_ascii=False) + "\n"  # one line per file: several files make JSON Lines


def _srt(transcript: Transcript) -> str:
    cues = enumerate(transcript.segments, start=1)
    return "\n".join(f"{number}\n{_cue(segment, decimal=',')}" for number, segment in cues)


def _vtt(transcript: Transcript) -> str:
    return "\n".join(["WEBVTT\n"] + [_cue(segment, decimal=".") for segment in transcript.segments])


def _cue(segment: Segment, decimal: str) -> str:
    # "-->" inside the text would read as a second timing line.
    text = segment.text.strip().replace("-->", "->")
    return f"{_timestamp(segment.start, decimal)} --> {_timestamp(segment.end, decimal)}\n{text}\n"


def _timestamp(seconds: float, decimal: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT); hours keep counting past 99."""
    minutes, millis = divmod(round(seconds * 1000), 60_000)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}{decimal}{millis % 1000:03d}"


_RENDERERS = {"txt": _txt, "json": _json, "srt": _srt, "vtt": _vtt}
