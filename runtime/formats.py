"""A Transcript as the text a user saves: plain text, one JSON object, SRT or WebVTT subtitles.

Subtitles are a cue per segment; with a ``SubtitleLayout`` their lines wrap at ``max_line_width`` characters, and
when the segments have words (word timestamps) and ``max_line_count`` is set too, cues are cut at words instead:
at most that many lines a cue, and a new cue after a pause of more than PAUSE_S (openai-whisper's writer's rules).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from edge_asr.runtime.errors import EdgeAsrError, require
from edge_asr.runtime.transcript import Segment, Transcript

FORMATS = ("txt", "json", "srt", "vtt")
PAUSE_S = 3.0


@dataclass(frozen=True)
class SubtitleLayout:
    max_line_width: int | None = None  # characters a line; None: a line per cue
    max_line_count: int | None = None  # lines a cue, cues cut at words (needs word timestamps); None: cue per segment

    def validate(self) -> "SubtitleLayout":
        for name in ("max_line_width", "max_line_count"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{name} must be at least 1, not {value}.")
        return self


def render(transcript: Transcript, fmt: str, layout: SubtitleLayout | None = None) -> str:
    """The whole file's content in ``fmt``, one of FORMATS; ``layout`` shapes srt and vtt cues."""
    if fmt not in FORMATS:
        raise EdgeAsrError(f"Unknown output format '{fmt}'; choose one of {', '.join(FORMATS)}.")
    if fmt in ("srt", "vtt"):
        return _RENDERERS[fmt](_cues(transcript, (layout or SubtitleLayout()).validate()))
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
        "segments": [_json_segment(s) for s in transcript.segments],
    }
    return json.dumps(document, ensure_ascii=False) + "\n"  # one line per file: several files make JSON Lines


def _json_segment(segment: Segment) -> dict:
    entry = {"start": round(segment.start, 3), "end": round(segment.end, 3), "text": segment.text.strip()}
    if segment.words is not None:
        entry["words"] = [word.to_dict() for word in segment.words]
    return entry


Cue = tuple[float, float, str]


def _cues(transcript: Transcript, layout: SubtitleLayout) -> list[Cue]:
    segments = transcript.segments
    if not segments or any(s.words is None for s in segments):
        return [(s.start, s.end, _wrap(s.text.strip(), layout.max_line_width)) for s in segments]
    return _word_cues(segments, layout)


def _wrap(text: str, width: int | None) -> str:
    """Lines of at most ``width`` characters, broken between words (a longer word keeps a line of its own)."""
    if width is None:
        return text
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


def _word_cues(segments: list[Segment], layout: SubtitleLayout) -> list[Cue]:
    """openai-whisper's SubtitlesWriter.iterate_result: words laid into lines and cues."""
    preserve_segments = layout.max_line_count is None or layout.max_line_width is None
    width = layout.max_line_width or 1000
    cues: list[list[tuple[float, float, str]]] = []
    cue: list[tuple[float, float, str]] = []
    line_length, line_count = 0, 1
    last = next((s.words[0].start for s in segments if s.words), 0.0)
    for segment in segments:
        for i, word in enumerate(segment.words):
            text = word.word
            long_pause = not preserve_segments and word.start - last > PAUSE_S
            has_room = line_length + len(text) <= width
            segment_break = i == 0 and len(cue) > 0 and preserve_segments
            if line_length > 0 and has_room and not long_pause and not segment_break:
                line_length += len(text)
            else:
                text = text.strip()
                if (cue and layout.max_line_count is not None and (long_pause or line_count >= layout.max_line_count)
                        or segment_break):
                    cues.append(cue)
                    cue, line_count = [], 1
                elif line_length > 0:
                    line_count += 1
                    text = "\n" + text
                line_length = len(text.strip())
            cue.append((word.start, word.end, text))
            last = word.start
    if cue:
        cues.append(cue)
    return [(words[0][0], words[-1][1], "".join(text for _, _, text in words)) for words in cues]


def _srt(cues: list[Cue]) -> str:
    return "\n".join(f"{number}\n{_cue(cue, decimal=',')}" for number, cue in enumerate(cues, start=1))


def _vtt(cues: list[Cue]) -> str:
    return "\n".join(["WEBVTT\n"] + [_cue(cue, decimal=".") for cue in cues])


def _cue(cue: Cue, decimal: str) -> str:
    start, end, text = cue
    text = text.strip().replace("-->", "->")  # "-->" inside the text would read as a second timing line
    return f"{_timestamp(start, decimal)} --> {_timestamp(end, decimal)}\n{text}\n"


def _timestamp(seconds: float, decimal: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (WebVTT); hours keep counting past 99."""
    minutes, millis = divmod(round(seconds * 1000), 60_000)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}{decimal}{millis % 1000:03d}"


_RENDERERS = {"txt": _txt, "json": _json, "srt": _srt, "vtt": _vtt}
