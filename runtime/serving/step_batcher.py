"""Continuous batching below the engine interface: the decoder steps of many threads, each decoding
its own utterance, become one engine call per step.

Each thread runs the ordinary decoding code (decoding/decode.py) against a StepBatcher, which looks
like an engine. A thread's first one-token step moves its rows into a pool shared with the other
threads whose audio context has the same length: its cache rows (the filled prefix) and its
cross-attention keys and values are copied into free slots once, and its cache object is re-pointed
at its slots, so later steps copy nothing. A batcher thread then runs one engine.decode a step over
the pool's slots from the first to the last row whose thread waits for a step, each at its own
position; rows in between whose thread is busy elsewhere are passengers, fed a token at the position
their next real token will overwrite (the cache at and after a row's offset is never attended to),
their logits dropped.
A thread whose decoding ends drops its cache; a finalizer frees its slots, and a new utterance may
take them at the next step: rows join and leave between steps.

Encoder calls and prompt passes (several tokens a row) go straight to the engine. The slots live where
the engine keeps them (engines/base.py, DecoderPool: host arrays for onnxruntime, GPU memory for the
PyTorch engine), and which decodings may share a pool is the engine's to say (one audio length for
onnxruntime, any for the PyTorch engine, whose step masks each row's audio).
"""
from __future__ import annotations

import threading
import time
import weakref

import numpy as np

# Slots a pool is made with. A full pool is never grown (growing would move live rows under threads that
# may be reordering them): another pool is opened.
POOL_ROWS = 16


class _Request:
    def __init__(self, tokens: np.ndarray, offsets: np.ndarray):
        self.tokens, self.offsets = tokens, offsets
        self.logits: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()  # waited on outside the lock: a step wakes only its own threads


class _Member:
    """One thread's decoding in a pool: its slots [start, start + rows) and its next positions."""

    def __init__(self, start: int, rows: int, next_offsets: np.ndarray):
        self.start, self.rows, self.next_offsets = start, rows, next_offsets
        self.request: _Request | None = None
        self.waiting_since = 0.0


class _Pool:
    """The engine's slots (engines/base.py, DecoderPool) for decodings whose audio contexts share `key`, and
    which decoding holds which."""

    def __init__(self, engine, audio, key, capacity: int):
        self.key, self.capacity = key, capacity
        self.slots = engine.new_pool(audio, capacity)
        self.members: dict[int, _Member] = {}  # by id() of the member's cache object
        self.caches: dict[int, weakref.ref] = {}
        self.running = False

    def free_start(self, rows: int) -> int | None:
        used = np.zeros(self.capacity, bool)
        for member in self.members.values():
            used[member.start : member.start + member.rows] = True
        for start in range(self.capacity - rows + 1):
            if not used[start : start + rows].any():
                return start
        return None


class StepBatcher:
    """An engine for many threads: their one-token decoder steps run as one batch per step.

    wait_s: how long a step waits for the pool's other rows to ask for theirs before it runs with
    them as passengers (they are between steps, or done and not yet freed).
    """

    def __init__(self, engine, wait_s: float = 0.001):
        self.engine, self.dims, self.wait_s = engine, engine.dims, wait_s
        self._pools: list[_Pool] = []
        self._gone: list[tuple[_Pool, int, _Member]] = []  # left since the last look, see _leave
        self._lock = threading.RLock()  # re-entrant: a finalizer may run inside a locked section
        self._changed = threading.Condition(self._lock)
        self._engine = threading.Lock()  # one engine call at a time: concurrent calls only contend for the cores
        self._closed = False
        # engine calls, the rows they computed, and of those the rows whose thread asked for the step
        self.steps = self.rows_stepped = self.rows_asked = 0
        self._thread = threading.Thread(target=self._run, name="edge-asr-step-batcher", daemon=True)
        self._thread.start()

    def encode(self, mel):
        with self._engine:
            return self.engine.encode(mel)

    def new_cache(self, batch: int):
        return self.engine.new_cache(batch)

    def decode(self, tokens, offsets, cache, audio, select) -> np.ndarray:
        offsets = np.asarray(offsets, np.int64)
        # A prompt pass, or a first pass on an empty cache (language detection): alone, straight through.
        if tokens.shape[1] != 1 or np.asarray(select).shape[1] != 1 or not offsets.any():
            with self._engine:
                return self.engine.decode(tokens, offsets, cache, audio, select)
        request = _Request(np.asarray(tokens[:, 0], np.int64), offsets)
        with self._changed:
            pool, member = self._member(cache, audio, offsets)
            member.request, member.waiting_since = request, time.monotonic()
            self._changed.notify_all()
        request.done.wait()
        error, request.error = request.error, None
        if error is not None:
            try:
                raise error
            finally:
                del error  # else this frame, held by the traceback, holds the error and so the caches
        return request.logits

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join()

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def _member(self, cache, audio, offsets: np.ndarray) -> tuple[_Pool, _Member]:
        """Under the lock: the cache's member, joining a pool (copying its rows in) on its first step."""
        key = self.engine.pool_key(audio)
        rows = cache.batch
        while True:
            self._forget_gone()
            pools = [p for p in self._pools if p.key == key]
            for pool in pools:
                member = pool.members.get(id(cache))
                if member is not None and pool.caches[id(cache)]() is cache:
                    return pool, member
            with_room = [p for p in pools if p.free_start(rows) is not None]
            idle = [p for p in with_room if not p.running]  # slots may not be written under a running step
            if idle or not with_room:
                break
            self._changed.wait()
        pool = idle[0] if idle else self._open_pool(audio, key, rows)
        start = pool.free_start(rows)
        slots = slice(start, start + rows)
        pool.slots.admit(slots, cache, audio, int(offsets.max()))
        member = _Member(start, rows, offsets.copy())
        pool.members[id(cache)] = member
        pool.caches[id(cache)] = weakref.ref(cache)
        pool.slots.point(cache, slots)
        weakref.finalize(cache, self._leave, pool, id(cache), member)
        return pool, member

    def _open_pool(self, audio, key: tuple, rows: int) -> _Pool:
        pool = _Pool(self.engine, audio, key, max(POOL_ROWS, rows))
        self._pools.append(pool)
        return pool

    def _leave(self, pool: _Pool, key: int, member: _Member) -> None:
        """The decoding dropped its cache. A finalizer runs wherever the last reference went, possibly in
        the middle of a loop over the members under this (re-entrant) lock: so it only takes note."""
        with self._changed:
            self._gone.append((pool, key, member))
            self._changed.notify_all()

    def _forget_gone(self) -> None:
        """Under the lock: frees the slots of the decodings that left, and closes pools left empty."""
        gone, self._gone = self._gone, []
        for pool, key, member in gone:
            if pool.members.get(key) is member:
                del pool.members[key]
                del pool.caches[key]
        self._pools = [p for p in self._pools if p.members or p.running]

    def _run(self) -> None:
        while True:
            with self._changed:
                pool = self._due()
                while pool is None:
                    if self._closed:
                        return
                    self._changed.wait(self._next_deadline())
                    pool = self._due()
                tokens, offsets, members, first = self._batch(pool)
                pool.running = True
            n, logits, error = len(tokens), None, None
            try:
                with self._engine:
                    logits = pool.slots.step(tokens, offsets, first, first + n)
            except Exception as err:  # every waiting thread gets the error, as if it had called alone
                error = err
            finally:
                with self._changed:
                    pool.running = False
                    self.steps, self.rows_stepped = self.steps + 1, self.rows_stepped + n
                    self.rows_asked += sum(m.rows for m in members)
                    for member in members:
                        request, member.request = member.request, None
                        rows = slice(member.start - first, member.start - first + member.rows)
                        request.logits = None if logits is None else logits[rows, None]  # [rows, 1, vocab]
                        request.error = error
                        request.done.set()
                        member.next_offsets = request.offsets + 1
                    self._changed.notify_all()
            logits = error = request = None  # no reference to the caches until the next step

    def _due(self) -> _Pool | None:
        """Under the lock: a pool whose members all wait for a step, or whose first waiter waited wait_s."""
        self._forget_gone()
        now = time.monotonic()
        for pool in self._pools:
            waiting = [m for m in pool.members.values() if m.request is not None]
            if waiting and (len(waiting) == len(pool.members) or now - min(m.waiting_since for m in waiting) >= self.wait_s):
                return pool
        return None

    def _next_deadline(self) -> float | None:
        waits = [m.waiting_since for p in self._pools for m in p.members.values() if m.request is not None]
        return max(0.0, min(waits) + self.wait_s - time.monotonic()) if waits else None

    @staticmethod
    def _batch(pool: _Pool) -> tuple[np.ndarray, np.ndarray, list[_Member], int]:
        """Under the lock: the slots from the first to the last waiting row (or the wider span the engine
        runs), and the first's index. Rows in between that are not waiting ride along as passengers at
        their next position (free slots at 0), fed token 0: their logits are dropped."""
        waiting = [m for m in pool.members.values() if m.request is not None]
        first, stop = pool.slots.span(min(m.start for m in waiting), max(m.start + m.rows for m in waiting))
        tokens, offsets = np.zeros(stop - first, np.int64), np.zeros(stop - first, np.int64)
        for member in pool.members.values():
            if first <= member.start < stop:
                rows = slice(member.start - first, member.start - first + member.rows)
                if member.request is not None:
                    tokens[rows], offsets[rows] = member.request.tokens, member.request.offsets
                else:
                    offsets[rows] = member.next_offsets
        return tokens, offsets, waiting, first
