"""How long the encoder's input is: Whisper's 30 s, or the audio plus a margin for models that need no padding.

Stock Whisper saw only 30 s windows in training (shorter audio padded with silence), and fed much less it
loops or drops words. A length-adaptive student was trained on its audio plus a margin of silence, so its
encoder cost can follow the audio. The checkpoint says which (``WindowPolicy``), compile copies that into
the bundle's manifest, and ``encoder_frames`` decides each window from it and the user's choice.

A third kind keeps stock Whisper's weights and still encodes only the audio: with ``cached_padding`` the encoder
computes the audio's positions alone and attends, past them, to the keys and values that a 30 s window's padding
holds at every layer, computed once from the model's own weights; the decoder reads the padding's own output
after the audio's (models/whisper_torch.py, ``WhisperModel.cache_padding``). Its decoder so reads 30 s of frames
as it was trained to, and its windows are padded with openai's zeros, as stock Whisper's are. ``padding_probes``
computes every so many padding positions with the audio as well and moves the cached padding between them by
what the audio changed there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.mel import FRAMES_PER_SECOND, N_FRAMES, LogMelFrontend

ENCODER_CONTEXTS = ("utterance", "full")
# Shorter inputs make a stock Whisper loop or drop words: at 10 s the developer clips lost 3 words of 93
# against 30 s, at 15 s none (benchmarks/stream_wer.py).
STOCK_MIN_CONTEXT_S = 15.0


@dataclass(frozen=True)
class WindowPolicy:
    """What encoder input a model was trained on; the defaults are stock Whisper's.

    The same two keys appear in a student checkpoint (under "edge_asr") and a bundle manifest's model
    section; a checkpoint or manifest without them is stock Whisper's.
    """

    needs_30s_padding: bool = True
    margin_s: float = 1.0  # silence after the audio that a window without 30 s padding keeps
    # The average log-probability at or under which a window the model calls silent (no-speech probability over
    # the threshold) is skipped; None: openai's rule (TranscribeOptions.logprob_threshold, -1). A student can be
    # surer than its teacher of the "Thank you." it writes on noise (decoding/transcribe.py, _is_silence).
    silence_logprob: float | None = None
    cached_padding: bool = False  # the encoder attends to a 30 s window's padding cached from its own weights
    # With the cached padding: encoder positions between the padding's probes, computed with the audio to correct
    # the cache (models/whisper_torch.py, AudioEncoder.cache_padding); 0: none, the cache alone.
    padding_probes: int = 0

    @property
    def reads_30s(self) -> bool:
        """Whether the decoder reads 30 s of encoder frames: stock Whisper, or a model with the cached padding."""
        return self.needs_30s_padding or self.cached_padding

    def validate(self) -> "WindowPolicy":
        if not isinstance(self.needs_30s_padding, bool):
            raise EdgeAsrError(f"needs_30s_padding must be true or false, not {self.needs_30s_padding!r}.")
        if not isinstance(self.cached_padding, bool):
            raise EdgeAsrError(f"cached_padding must be true or false, not {self.cached_padding!r}.")
        if self.cached_padding and self.needs_30s_padding:
            raise EdgeAsrError("a model with the cached padding encodes its audio alone: it cannot also need 30 s "
                               "windows.")
        if not isinstance(self.padding_probes, int) or isinstance(self.padding_probes, bool) or not (
                0 <= self.padding_probes <= 1500):
            raise EdgeAsrError(f"padding_probes must be a whole number of encoder positions from 0 to 1500, not "
                               f"{self.padding_probes!r}.")
        if self.padding_probes and not self.cached_padding:
            raise EdgeAsrError("padding probes correct the cached padding: a model without it cannot have them.")
        if not _number(self.margin_s) or not 0 <= self.margin_s <= 30:
            raise EdgeAsrError(f"the window margin must be 0 to 30 seconds, not {self.margin_s!r}.")
        if self.silence_logprob is not None and not (_number(self.silence_logprob) and -10 <= self.silence_logprob <= 0):
            raise EdgeAsrError(f"the silence log-probability must be -10 to 0, not {self.silence_logprob!r}.")
        return self

    def to_dict(self) -> dict:
        gate = {} if self.silence_logprob is None else {"silence_logprob_threshold": self.silence_logprob}
        padding = {"cached_padding": True} if self.cached_padding else {}
        if self.padding_probes:
            padding["padding_probes"] = self.padding_probes
        return {"needs_30s_padding": self.needs_30s_padding, "window_margin_s": self.margin_s, **gate, **padding}

    @classmethod
    def from_dict(cls, data: dict) -> "WindowPolicy":
        """The policy in ``data`` (a checkpoint's "edge_asr" entry or a manifest's model section); validated."""
        defaults = cls()
        return cls(data.get("needs_30s_padding", defaults.needs_30s_padding),
                   data.get("window_margin_s", defaults.margin_s),
                   data.get("silence_logprob_threshold", defaults.silence_logprob),
                   data.get("cached_padding", defaults.cached_padding),
                   data.get("padding_probes", defaults.padding_probes)).validate()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def encoder_frames(content_frames: int, policy: WindowPolicy, context: str | None = None,
                   max_frames: int = N_FRAMES, min_s: float | None = None) -> int:
    """Mel frames of the encoder window that holds ``content_frames`` of audio.

    ``context`` "full" pads every window to ``max_frames``; "utterance" encodes the audio plus the model's
    margin, rounded up to even, at least ``min_s`` (None: 15 s for stock Whisper, nothing for a model that
    needs no padding) and at most ``max_frames``; None is the model's own choice: "full" for stock Whisper,
    "utterance" for a model that needs no padding.
    """
    context = context or ("full" if policy.needs_30s_padding else "utterance")
    if context == "full":
        return max_frames
    if min_s is None:
        min_s = STOCK_MIN_CONTEXT_S if policy.needs_30s_padding else 0.0
    wanted = max(content_frames + policy.margin_s * FRAMES_PER_SECOND, min_s * FRAMES_PER_SECOND)
    return min(max_frames, 2 * math.ceil(wanted / 2))


def padding_value(policy: WindowPolicy, peak: float | None) -> float:
    """What a window is filled with after its audio, given the peak of the recording's normalised features
    (None: it has none).

    A length-adaptive model was trained on windows ending in the features of silent audio (the Mel
    floor, as Whisper's own training pads its audio with zeros), and reads any other value as sound:
    fed zeros, the tiny.en student lost 3 words of 93. Stock Whisper keeps the zeros of openai's
    ``pad_or_trim``, which the streaming minimum context (STOCK_MIN_CONTEXT_S) was measured with; with
    the floor instead, its 15 s window heard JFK's "And so my fellow Americans" as "And so am I".
    """
    if policy.reads_30s or peak is None:  # the cached padding was computed from zeros too
        return 0.0
    return LogMelFrontend.silence_level(peak)
