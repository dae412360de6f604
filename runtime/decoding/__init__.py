"""Decoding, written once above the engine interface.

options.py (what can be asked), logit_filters.py (forbidden tokens), search.py (greedy and beam),
decode.py (one batch of windows), language.py (language identification), segments.py and
repetition.py (cutting and checking a window's tokens), transcribe.py (long-form audio). Import from
the modules; the package re-exports nothing, so `decoding.transcribe` stays the module.
"""
