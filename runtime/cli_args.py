"""Argument types shared by the parsers of every `edge-asr` command."""
from __future__ import annotations

import argparse
import os

THREADS_PER_CORE = 2  # above this, threads only wait for each other: 64 on 2 cores ran 18x slower than 2
# Each beam is a decoder row with its own cross-attention cache (18 MB for tiny's 30 s window, 37 MB for base's):
# --beam 1000 asked for 22 GB and was killed. Whisper's own beam is 5; 32 is far past where WER stops improving.
MAX_BEAM = 32


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def thread_count(text: str) -> int:
    """CPU threads: at least 1, at most THREADS_PER_CORE times the cores this process may run on."""
    value = positive_int(text)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if value > THREADS_PER_CORE * cores:
        raise argparse.ArgumentTypeError(f"{value} threads is more than this machine's {cores} cores can use "
                                         f"(at most {THREADS_PER_CORE * cores})")
    return value


def beam_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BEAM:
        raise argparse.ArgumentTypeError(f"a beam of {value} would need a decoder row and its cache per beam; "
                                         f"the most is {MAX_BEAM} (Whisper's own is 5)")
    return value
