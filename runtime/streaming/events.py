"""What streaming recognition emits, and where it goes: a live terminal line or JSON lines."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, TextIO

from edge_asr.runtime.transcript import Word


@dataclass(frozen=True)
class StreamEvent:
    """``partial``: the utterance so far, ``text`` its stable words (never withdrawn), ``unstable``
    the newest guess at the rest. ``final``: the utterance's text, after it ended."""

    type: Literal["partial", "final"]
    start: float  # seconds from the start of the stream
    end: float
    text: str
    unstable: str = ""
    voiced_end: float = field(default=0.0, compare=False)  # where speech stopped: latency is measured from here
    words: tuple[Word, ...] | None = None  # a final's words, with word timestamps (stream times)

    def to_json(self) -> str:
        event = {"type": self.type, "start": round(self.start, 3), "end": round(self.end, 3), "text": self.text}
        if self.type == "partial":
            event["unstable"] = self.unstable
        else:  # where the speech stopped: a client measures its latency from here
            event["speech_end"] = round(self.voiced_end, 3)
            if self.words is not None:
                event["words"] = [word.to_dict() for word in self.words]
        return json.dumps(event, ensure_ascii=False)


class JsonlSink:
    """One JSON object a line, flushed at once, for programs that follow the stream."""

    def __init__(self, out: TextIO):
        self.out = out

    def write(self, event: StreamEvent) -> None:
        self.out.write(event.to_json() + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class TerminalSink:
    """Finals as lines. On a terminal the utterance in progress is one live line, its unstable
    words dimmed, rewritten as partials come; elsewhere (a pipe, a file) only finals are written."""

    CLEAR_LINE = "\r\033[K"
    DIM, NORMAL = "\033[2m", "\033[0m"

    def __init__(self, out: TextIO, live: bool | None = None):
        self.out = out
        self.live = out.isatty() if live is None else live
        self._showing = False

    def write(self, event: StreamEvent) -> None:
        if event.type == "partial":
            if self.live:
                unstable = f" {self.DIM}{event.unstable}{self.NORMAL}" if event.unstable else ""
                self.out.write(f"{self.CLEAR_LINE}{event.text}{unstable}")
                self._showing = True
                self.out.flush()
            return
        prefix = self.CLEAR_LINE if self._showing else ""
        self._showing = False
        if event.text:
            self.out.write(f"{prefix}{event.text}\n")
        elif prefix:
            self.out.write(prefix)
        self.out.flush()

    def close(self) -> None:
        if self._showing:
            self.out.write(self.CLEAR_LINE)
            self.out.flush()


SINKS = {"text": TerminalSink, "jsonl": JsonlSink}
