"""render(): each output format of a small Transcript, byte for byte."""
import json

import pytest

from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.formats import FORMATS, render
from edge_asr.runtime.transcript import Segment, Transcript


@pytest.fixture
def transcript() -> Transcript:
    return Transcript(
        file="talk.flac",
        language="en",
        duration=3725.43219,
        segments=[
            Segment(0.0, 2.5, " And so, my fellow Americans,"),
            Segment(2.5004, 61.0996, " ask not --> what your country"),
            Segment(3599.9996, 3725.4321, " can do for you."),
        ],
    )


def test_txt_has_one_line_per_segment(transcript):
    assert render(transcript, "txt") == (
        "And so, my fellow Americans,\nask not --> what your country\ncan do for you.\n"
    )


def test_json_is_one_object_with_times_in_milliseconds(transcript):
    document = json.loads(render(transcript, "json"))
    assert list(document) == ["file", "language", "duration", "text", "complete", "segments"]
    assert document["complete"] is True  # a whole file; interrupted or damaged ones say false
    assert document["file"] == "talk.flac" and document["language"] == "en"
    assert document["duration"] == 3725.432
    assert document["text"] == transcript.text
    assert document["segments"] == [
        {"start": 0.0, "end": 2.5, "text": "And so, my fellow Americans,"},
        {"start": 2.5, "end": 61.1, "text": "ask not --> what your country"},
        {"start": 3600.0, "end": 3725.432, "text": "can do for you."},
    ]


def test_srt_numbers_cues_with_comma_milliseconds(transcript):
    assert render(transcript, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\nAnd so, my fellow Americans,\n\n"
        "2\n00:00:02,500 --> 00:01:01,100\nask not -> what your country\n\n"
        "3\n01:00:00,000 --> 01:02:05,432\ncan do for you.\n"
    )


def test_vtt_has_header_and_dot_milliseconds(transcript):
    assert render(transcript, "vtt") == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.500\nAnd so, my fellow Americans,\n\n"
        "00:00:02.500 --> 00:01:01.100\nask not -> what your country\n\n"
        "01:00:00.000 --> 01:02:05.432\ncan do for you.\n"
    )


def test_empty_transcript():
    empty = Transcript(file="silence.wav", language="en", duration=1.0)
    assert render(empty, "txt") == render(empty, "srt") == ""
    assert render(empty, "vtt") == "WEBVTT\n"
    assert json.loads(render(empty, "json"))["segments"] == []


def test_every_format_renders_and_unknown_one_is_refused(transcript):
    assert all(render(transcript, fmt) for fmt in FORMATS)
    with pytest.raises(EdgeAsrError, match="Unknown output format 'docx'; choose one of txt, json"):
        render(transcript, "docx")
