"""Decoding written once above the engine interface: options, logit filters, greedy and beam search,
one-window decoding, language identification and long-form transcription."""
from edge_asr.runtime.decoding.decode import DecodingResult, decode_window
from edge_asr.runtime.decoding.language import detect_language
from edge_asr.runtime.decoding.options import DecodingOptions, TranscribeOptions
from edge_asr.runtime.decoding.transcribe import transcribe

__all__ = ["DecodingOptions", "DecodingResult", "TranscribeOptions", "decode_window", "detect_language", "transcribe"]
