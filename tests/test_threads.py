"""The process's onnxruntime threads (runtime/threads.py): helpers before the engine (one pool size per process:
test_ort_engine.py), numpy's BLAS held to one thread beside it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

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


def test_the_engine_holds_numpys_blas_to_one_thread(tiny_bundle):
    """OpenBLAS's own threads spin after each product and took the engine's cores (runtime/threads.py): a fresh
    process's BLAS runs on one thread once its engine is made."""
    script = (
        "import json, sys, numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from edge_asr.runtime.bundle import load_bundle\n"
        "from edge_asr.runtime.engines import load_engine\n"
        "blas = lambda: [pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'blas']\n"
        "before = blas()\n"
        "load_engine(load_bundle(sys.argv[1]), 2)\n"
        "print(json.dumps([before, blas()]))\n"
    )
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    result = subprocess.run([sys.executable, "-c", script, str(tiny_bundle)], capture_output=True, text=True,
                            env=env, check=True)
    before, after = json.loads(result.stdout)
    assert before and all(count == 2 for count in before), result.stdout  # numpy's BLAS is found, 2 threads
    assert after == [1] * len(before), result.stdout


@pytest.mark.parametrize("command, threads", [("transcribe", 1), ("compile", 2)])
def test_commands_that_run_an_engine_start_numpy_with_one_blas_thread(command, threads):
    """Started, OpenBLAS's extra threads spin for a while and took a core from the engine's session builds: a
    command that runs an engine sets BLAS to one thread before its parser imports numpy; one that trains or
    compiles keeps the machine's (here 2, from the environment)."""
    script = (
        "import json, sys\n"
        "from edge_asr.runtime.cli import main\n"
        "try:\n"
        "    main([sys.argv[1], '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "import numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "print(json.dumps([pool['num_threads'] for pool in threadpool_info() if pool['user_api'] == 'blas']))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = "2"  # OpenBLAS's fallback when OPENBLAS_NUM_THREADS is not set
    result = subprocess.run([sys.executable, "-c", script, command], capture_output=True, text=True, env=env,
                            check=True)
    counts = json.loads(result.stdout.splitlines()[-1])
    assert counts and all(count == threads for count in counts), result.stdout


def test_a_peers_child_gets_the_environment_without_the_blas_setting_edge_asr_added(monkeypatch):
    """The bench's faster-whisper child starts its libraries as they ship: OPENBLAS_NUM_THREADS is left out of its
    environment when edge-asr set it, and kept when the user did."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setattr(Threads, "_blas_env_added", False)
    Threads.hold_blas_from_the_start()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1" and "OPENBLAS_NUM_THREADS" not in Threads.environment_as_given()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    monkeypatch.setattr(Threads, "_blas_env_added", False)
    Threads.hold_blas_from_the_start()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "3" and Threads.environment_as_given()["OPENBLAS_NUM_THREADS"] == "3"
