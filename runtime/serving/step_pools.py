"""Which decoding holds which slots of which engine pool: the bookkeeping of batched decoder steps.

A decoding's first one-token step moves its rows into a pool (engines/base.py, DecoderPool) shared with
the other decodings whose audio contexts share the engine's pool key: its cache rows (the filled
prefix) and its audio context are copied into free slots once, and its cache object is re-pointed at
its slots, so later steps copy nothing. A step runs over the pool's slots from the first to the last
row that asks for it (or the wider span the engine runs); rows in between that do not ask are
passengers, fed a token at the position their next real token will overwrite (the cache at and after
a row's offset is never attended to), their logits dropped. A decoding that ends drops its cache; a
finalizer notes it, and its slots are free at the next look: rows join and leave between steps.

Not thread-safe: the engine loop (serving/engine_loop.py) calls it from its one thread.
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np

# Slots a pool is made with, unless the engine says (``pool_rows``). A full pool is never grown (growing would
# move live rows under decodings that may be reordering them): another pool is opened.
POOL_ROWS = 16
# Empty pools kept for the next decodings: making a pool costs its memory and, on a GPU, recording its graphs.
IDLE_POOLS = 2


@dataclass
class Step:
    """One decoding's request for a step: a token per row at its offset."""

    tokens: np.ndarray  # int64 [rows]
    offsets: np.ndarray  # int64 [rows]
    since: float  # when it was asked (time.monotonic)


class Member:
    """One decoding in a pool: its slots [start, start + rows) and its next positions."""

    def __init__(self, start: int, rows: int, next_offsets: np.ndarray):
        self.start, self.rows, self.next_offsets = start, rows, next_offsets
        self.step: Step | None = None

    @property
    def slots(self) -> slice:
        return slice(self.start, self.start + self.rows)


class Pool:
    """The engine's slots for decodings whose audio contexts share ``key``, and which decoding holds which."""

    def __init__(self, engine, audio, key, capacity: int):
        self.key, self.capacity = key, capacity
        self.slots = engine.new_pool(audio, capacity)
        self.members: dict[int, Member] = {}  # by id() of the member's cache object
        self.caches: dict[int, weakref.ref] = {}
        self.running = False  # a step is under way: its slots must not be written

    def free_start(self, rows: int) -> int | None:
        used = np.zeros(self.capacity, bool)
        for member in self.members.values():
            used[member.slots] = True
        for start in range(self.capacity - rows + 1):
            if not used[start : start + rows].any():
                return start
        return None

    def waiting(self) -> list[Member]:
        return [m for m in self.members.values() if m.step is not None]

    def batch(self) -> "Batch":
        """The tokens and offsets of the span over every waiting row, and its waiting members. Rows in the
        span that do not wait ride along at their next position (free slots at 0) with token 0."""
        waiting = [m for m in self.members.values() if m.step is not None]
        first, stop = self.slots.span(min(m.start for m in waiting), max(m.start + m.rows for m in waiting))
        tokens, offsets = np.zeros(stop - first, np.int64), np.zeros(stop - first, np.int64)
        for member in self.members.values():
            if first <= member.start < stop:
                rows = slice(member.start - first, member.start - first + member.rows)
                if member.step is not None:
                    tokens[rows], offsets[rows] = member.step.tokens, member.step.offsets
                else:
                    offsets[rows] = member.next_offsets
        return Batch(tokens, offsets, waiting, first)


@dataclass
class Batch:
    """One step's input over slots [first, first + len(tokens)) of a pool, and the members that asked."""

    tokens: np.ndarray
    offsets: np.ndarray
    waiting: list[Member]
    first: int

    def run(self, pool: Pool) -> np.ndarray:
        """The engine's step: logits float32 [len(tokens), n_vocab]."""
        return pool.slots.step(self.tokens, self.offsets, self.first, self.first + len(self.tokens))

    def logits_of(self, member: Member, logits: np.ndarray) -> np.ndarray:
        """A member's rows of the step's logits, as engine.decode returns them: [rows, 1, n_vocab]."""
        return logits[member.start - self.first : member.start - self.first + member.rows, None]


class StepPools:
    """Every pool of one engine, and the decodings in them."""

    def __init__(self, engine, capacity: int | None = None):
        self.engine, self.capacity = engine, capacity or getattr(engine, "pool_rows", POOL_ROWS)
        self.pools: list[Pool] = []
        self._gone: list[tuple[Pool, int, Member]] = []  # noted by finalizers, forgotten at the next look
        self._gone_lock = threading.Lock()
        self.steps = self.rows_asked = 0  # engine calls, and the rows that asked for them

    def ask(self, cache, audio, tokens: np.ndarray, offsets: np.ndarray, can_admit=lambda pool: True
            ) -> tuple[Pool, Member] | None:
        """The cache's member asks for a step, joining a pool (its rows copied in) on its first step.
        None when it would have to join, and every pool with room is refused by ``can_admit``."""
        self.forget_gone()
        found = self._find(cache, audio) or self._join(cache, audio, offsets, can_admit)
        if found is None:
            return None
        pool, member = found
        member.step = Step(np.asarray(tokens, np.int64), np.asarray(offsets, np.int64), time.monotonic())
        return pool, member

    def done(self, batch: Batch) -> None:
        """After a step (run or failed): its members' next positions move on, their requests are cleared."""
        for member in batch.waiting:
            member.next_offsets, member.step = member.step.offsets + 1, None
        self.steps += 1
        self.rows_asked += sum(m.rows for m in batch.waiting)

    def forget_gone(self) -> None:
        """Frees the slots of the decodings that left, and closes the pools left empty beyond IDLE_POOLS."""
        with self._gone_lock:
            gone, self._gone = self._gone, []
        for pool, key, member in gone:
            if pool.members.get(key) is member:
                del pool.members[key]
                del pool.caches[key]
        idle = [p for p in self.pools if not p.members and not p.running]
        self.pools = [p for p in self.pools if p.members or p.running or p in idle[:IDLE_POOLS]]

    def _find(self, cache, audio) -> tuple[Pool, Member] | None:
        key = self.engine.pool_key(audio)
        for pool in self.pools:
            member = pool.members.get(id(cache))
            if pool.key == key and member is not None and pool.caches[id(cache)]() is cache:
                return pool, member
        return None

    def _join(self, cache, audio, offsets: np.ndarray, can_admit) -> tuple[Pool, Member] | None:
        key, rows = self.engine.pool_key(audio), cache.batch
        with_room = [p for p in self.pools if p.key == key and p.free_start(rows) is not None]
        open_to = [p for p in with_room if can_admit(p)]
        if with_room and not open_to:
            return None
        if open_to:
            pool = open_to[0]
        else:
            pool = Pool(self.engine, audio, key, max(self.capacity, rows))
            self.pools.append(pool)
        start = pool.free_start(rows)
        slots = slice(start, start + rows)
        pool.slots.admit(slots, cache, audio, int(np.max(offsets)))
        member = Member(start, rows, np.asarray(offsets, np.int64).copy())
        pool.members[id(cache)] = member
        pool.caches[id(cache)] = weakref.ref(cache)
        pool.slots.point(cache, slots)
        weakref.finalize(cache, self._leave, pool, id(cache), member)
        return pool, member

    def _leave(self, pool: Pool, key: int, member: Member) -> None:
        """The decoding dropped its cache. A finalizer runs wherever the last reference went, possibly in
        the middle of a loop over the members: so it only takes note."""
        with self._gone_lock:
            self._gone.append((pool, key, member))
