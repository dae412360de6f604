"""The process's onnxruntime threads, as one object that each entry point makes first.

onnxruntime gives a process one intra-op thread pool, sized by the first engine session: every engine session
shares it (a pool per session doubled decoder time) and its size cannot change afterwards. A helper model (the
Silero VAD, a Piper voice) made before that pool exists gets one thread of its own: the VAD then takes 0.12 ms a
32 ms window. Made after, onnxruntime refuses it threads of its own, so it runs on the engine's pool, whose idle
threads spin after each call: 0.30 ms a window, and a whole core on silence (benchmarks/stream_latency.py).

So an entry point makes one :class:`Threads`, makes its helpers with it (``SileroVad(threads=...)``), then its
engine (``Transcriber(bundle, threads=...)``). It refuses in one sentence a helper made after its own engine,
and an engine of another pool size than the process already has.

numpy's OpenBLAS keeps a pool of its own, one thread a core, whose threads spin after each matrix product (the Mel
filterbank, once a window) and took the engine's cores from it: with 2 engine threads the tiny.en-adaptive int8
encoder took 131 ms for a 6.3 s window instead of 50, and a pass over the developer clips 1.45 s instead of 1.04.
So the engine's first use holds BLAS to one thread for the process (``hold_blas``): the runtime's own products are
small, and the engine has the cores.
"""
from __future__ import annotations

import os
from typing import ClassVar

from edge_asr.runtime.errors import EdgeAsrError


def default_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Threads:
    """How many threads the engine gets, and the order its onnxruntime sessions are made in (module docstring)."""

    _pool_size: ClassVar[int | None] = None  # onnxruntime's shared pool: one per process, sized once
    _blas_held: ClassVar[bool] = False  # numpy's BLAS held to one thread (hold_blas)

    def __init__(self, engine: int | None = None):
        if engine is not None and (not isinstance(engine, int) or isinstance(engine, bool) or engine < 1):
            raise EdgeAsrError(f"the engine's threads must be a whole number of at least 1, not {engine!r}.")
        self.engine = engine or default_threads()
        self._engine_made = False

    @classmethod
    def of(cls, threads: "int | Threads | None") -> "Threads":
        """``threads`` as a Threads: itself, or a new one of that many engine threads (None: every core)."""
        return threads if isinstance(threads, Threads) else cls(threads)

    def helper_options(self):
        """Session options for a small helper model: one thread of its own, before any engine of the process;
        after one (another entry point's, in a test run), a seat on the shared pool, the only one onnxruntime
        allows. Refused after this object's own engine: the helper would then cost the engine a core."""
        import onnxruntime as ort

        if self._engine_made:
            raise EdgeAsrError("a helper model (the VAD) must be made before the engine that shares its threads, "
                               "or it runs on the engine's pool and costs a core on silence: make it first.")
        options = ort.SessionOptions()
        if Threads._pool_size is not None:
            options.use_per_session_threads = False
        else:
            options.intra_op_num_threads = 1  # a 32 ms VAD window is too small to split across threads
            options.inter_op_num_threads = 1
        return options

    def engine_options(self):
        """Session options for an engine's graphs, on the process's shared pool of ``engine`` threads (made
        now if it is the process's first engine)."""
        import onnxruntime as ort

        if Threads._pool_size is None:
            ort.set_global_thread_pool_sizes(self.engine, 1)
            Threads._pool_size = self.engine
        elif self.engine != Threads._pool_size:
            raise EdgeAsrError(f"this process's onnxruntime engines share one thread pool, which its first engine "
                               f"sized at {Threads._pool_size}; an engine asking for {self.engine} threads cannot be "
                               "made: give every engine the same number, or run it in another process.")
        self._engine_made = True
        options = ort.SessionOptions()
        options.use_per_session_threads = False
        return options

    _blas_env_added: ClassVar[bool] = False  # hold_blas_from_the_start set OPENBLAS_NUM_THREADS

    @classmethod
    def hold_blas_from_the_start(cls) -> None:
        """numpy's OpenBLAS to one thread before numpy is imported (``hold_blas`` holds it after): OpenBLAS then
        starts no thread of its own at all. Started, its one extra thread here spun for 0.1 s right after the
        import, a core taken from the engine's session builds (`edge-asr transcribe` of the developer clips, 2
        threads: 0.13 s less CPU, 0.04 s less wall time at the median of eight). For processes that run an engine;
        their child processes (the load test's server, the bench's edge-asr run) inherit it; a peer's run does not
        (``environment_as_given``). A user's own setting stays."""
        if "OPENBLAS_NUM_THREADS" not in os.environ:
            os.environ["OPENBLAS_NUM_THREADS"] = "1"
            cls._blas_env_added = True

    @classmethod
    def environment_as_given(cls) -> dict[str, str]:
        """This process's environment without the BLAS setting ``hold_blas_from_the_start`` added: for another
        system's child process (the bench's faster-whisper), whose libraries then start as they ship."""
        env = dict(os.environ)
        if cls._blas_env_added:
            env.pop("OPENBLAS_NUM_THREADS", None)
        return env

    @classmethod
    def hold_blas(cls) -> None:
        """numpy's BLAS (OpenBLAS, MKL...) to one thread for the rest of the process (module docstring); once."""
        if not cls._blas_held:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1, user_api="blas")
            cls._blas_held = True

    @classmethod
    def pool_size(cls) -> int | None:
        """The size of the process's shared pool; None before its first engine."""
        return cls._pool_size
