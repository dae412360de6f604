"""The process's onnxruntime threads (runtime/threads.py): helpers before the engine (one pool size per process:
test_ort_engine.py)."""
from __future__ import annotations

import pytest

from edge_asr.runtime.bundle import load_bundle
from edge_asr.runtime.engines import load_engine
from edge_asr.runtime.errors import EdgeAsrError
from edge_asr.runtime.threads import Threads


def test_a_helper_made_after_its_own_engine_is_refused(tiny_bundle, vad_model):
    from edge_asr.runtime.streaming.vad import SileroVad

    size = Threads.pool_size() or 2  # onnxruntime's pool is the process's: an earlier test may have sized it
    threads = Threads(size)
    SileroVad(vad_model, threads=threads)  # before the engine: allowed
    load_engine(load_bundle(tiny_bundle), threads)
    assert Threads.pool_size() == size
    with pytest.raises(EdgeAsrError, match="must be made before the engine"):
        SileroVad(vad_model, threads=threads)
    # Another entry point of the same process (another test) may still make helpers: they join the shared pool.
    assert not Threads(size).helper_options().use_per_session_threads


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_thread_counts_are_whole_numbers_of_at_least_one(count):
    with pytest.raises(EdgeAsrError, match="at least 1"):
        Threads(count)
