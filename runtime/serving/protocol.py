"""What `edge-asr serve` and its clients say to each other over one WebSocket: one stream each.

Connect to ``ws://HOST:PORT/``. A server started with a token wants it in the header
``Authorization: Bearer TOKEN``, or as ``?token=TOKEN`` for clients that cannot set headers; without
it the handshake is refused with HTTP 401.

Server -> client, JSON text messages:
- ``{"type": "ready", "stream": ID, "sample_rate": 16000, "format": "s16le"}`` first;
- ``{"type": "partial", "start", "end", "text", "unstable"}`` and ``{"type": "final", "start", "end",
  "text", ...}``, the events of ``edge-asr stream --format jsonl`` (times in seconds of this stream);
- ``{"type": "error", "message": "..."}``: a message the server could not use (it was ignored), or an
  utterance the engine failed on (its text is lost). The stream goes on either way;
- ``{"type": "closed", "reason": "..."}`` last, right before the server closes the connection.

Client -> server:
- binary messages: 16-bit little-endian mono PCM at 16 kHz, any whole number of samples per message,
  up to the server's ``--max-message-bytes``;
- text messages: JSON objects; ``{"type": "end"}`` says no more audio comes. The server sends the
  remaining finals, then the closed event, and closes.

Close codes: 1000 after the end of the stream; 1001 when the server shuts down (after the finals
already due); 1009 a message over the size limit; 1013 the server is full or cannot keep up; 4000 no
message for ``--idle-timeout`` seconds (after the finals of the audio already sent).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from edge_asr.runtime.audio import SAMPLE_RATE, pcm16_to_float32

AUDIO_FORMAT = "s16le"


@dataclass(frozen=True)
class Closing:
    """Why a stream ends: the closed event's reason, and the close code that follows it."""

    code: int
    reason: str


END_OF_STREAM = Closing(1000, "end of stream")
SHUTTING_DOWN = Closing(1001, "server shutting down")
TOO_BIG = 1009  # sent by websockets itself (max_size)
TRY_AGAIN_LATER = 1013
IDLE = 4000


class ProtocolError(Exception):
    """A client message the server ignores; str(err) is what the error event tells the client."""


def ready(stream_id: int) -> str:
    return json.dumps({"type": "ready", "stream": stream_id, "sample_rate": SAMPLE_RATE, "format": AUDIO_FORMAT})


def error(message: str) -> str:
    return json.dumps({"type": "error", "message": message}, ensure_ascii=False)


def closed(reason: str) -> str:
    return json.dumps({"type": "closed", "reason": reason})


def decode_audio(data: bytes) -> np.ndarray:
    """A binary message as float32 samples in [-1, 1), the scale of the engine's input."""
    if len(data) % 2:
        raise ProtocolError(f"audio must be whole 16-bit samples: this message has {len(data)} bytes, an odd count.")
    return pcm16_to_float32(data)


def check_end(text: str) -> None:
    """Accepts the one control message, ``{"type": "end"}``; ProtocolError says what is wrong with another."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProtocolError(f"a text message must be JSON, and this one is not ({err.msg}).") from None
    if not isinstance(message, dict):
        raise ProtocolError('a text message must be a JSON object, such as {"type": "end"}.')
    if message.get("type") != "end":
        raise ProtocolError(f'unknown message type {message.get("type")!r}: the only one is "end".')
