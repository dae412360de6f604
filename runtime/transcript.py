"""What transcription produces: segments with times, gathered per file."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Word:
    start: float
    end: float
    word: str  # as the model wrote it, with its leading space and the punctuation around it
    probability: float

    def to_dict(self) -> dict:
        """As JSON output writes it (transcribe's segments, stream's finals)."""
        return {"start": round(self.start, 3), "end": round(self.end, 3), "word": self.word,
                "probability": round(self.probability, 4)}


@dataclass
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0
    words: list[Word] | None = None  # with word timestamps (runtime/word_timing.py)


@dataclass
class WindowResult:
    """One decoded window of long-form audio: where it lay and the segments it produced."""

    start: float
    end: float
    language: str
    segments: list[Segment]


@dataclass
class Transcript:
    file: str
    language: str
    duration: float
    segments: list[Segment] = field(default_factory=list)
    complete: bool = True  # False: interrupted, or the audio failed or was damaged: the segments cover part of it

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()
